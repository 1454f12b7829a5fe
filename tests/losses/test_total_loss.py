"""Total loss: weighted sum of the parts, each returned for logging, and the pose-loss hook."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from vpog.config_schema import from_mapping
from vpog.geometry import look_at_pose, matrix_to_pose_vector
from vpog.losses import LossWeights, PoseLoss, PoseTargets, classification_loss, flow_loss, vpog_loss
from vpog.model import VPOGOutput


def _output_and_labels(B=2, S=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(-1, 197, (B, S, 14, 14), generator=g)
    vis = (torch.rand(B, S, 14, 14, 16, 16, generator=g) < 0.5) & ((cls >= 0) & (cls < 196))[..., None, None]
    labels = SimpleNamespace(patch_cls=cls, dense_flow=torch.randn(B, S, 14, 14, 16, 16, 2, generator=g) * 0.2,
                             dense_visible=vis)
    out = VPOGOutput(
        logits=torch.randn(B, S, 196, 197, generator=g, requires_grad=True),
        flow=torch.randn(B, S, 196, 16, 16, 2, generator=g, requires_grad=True),
        flow_b=(0.1 + torch.rand(B, S, 196, 16, 16, generator=g)).requires_grad_(),
        buddies=cls.reshape(B, S, 196).clamp(0, 195),
        chart=torch.zeros(B, S, 2),
        weight_scale=torch.tensor(1.3, requires_grad=True),
    )
    dirs = torch.nn.functional.normalize(torch.randn(B, S, 3, generator=g), dim=-1)
    pose = PoseTargets(
        t_depth=0.5 * torch.ones(B, S, 224, 224), t_K=torch.eye(3).expand(B, S, 3, 3) * 200,
        t_pose=look_at_pose(dirs, 0.5), q_K=torch.eye(3).expand(B, 3, 3).clone(),
        q_pose=look_at_pose(dirs[:, 0], 0.7),
    )
    return out, labels, pose


class RecordingPoseLoss:
    def __init__(self, reg=False):
        self.calls = []
        self.reg = reg

    def __call__(self, x3d, x2d, w2d, K, pose_gt):
        self.calls.append((x3d, x2d, w2d, K, pose_gt))
        pnp = (x2d.sum() * 1e-3 + w2d.mean())
        return (pnp, 0.5 * w2d.mean()) if self.reg else pnp


def test_weighted_sum_of_parts():
    out, labels, pose = _output_and_labels()
    w = LossWeights(flow_weight=0.7, pnp_weight=0.3, reg_weight=0.2, invisible_penalty=0.05, pnp_points=16)
    hook = RecordingPoseLoss(reg=True)
    got = vpog_loss(out, labels, w, pose_loss=hook, pose_targets=pose, generator=torch.Generator().manual_seed(0))
    cls = classification_loss(out.logits, labels.patch_cls)
    fl = flow_loss(out.flow, out.flow_b, labels.dense_flow, labels.dense_visible, labels.patch_cls)
    x3d, x2d, w2d, K, pose_gt = hook.calls[0]
    pnp, reg = x2d.sum() * 1e-3 + w2d.mean(), 0.5 * w2d.mean()
    want = cls + 0.7 * (fl.nll + 0.05 * fl.invisible) + 0.3 * pnp + 0.2 * reg
    torch.testing.assert_close(got["loss"], want)
    for key, value in (("cls", cls), ("flow_nll", fl.nll), ("flow_invisible", fl.invisible), ("pnp", pnp),
                       ("reg", reg)):
        torch.testing.assert_close(got[key], value)
    for key in ("cls_acc", "cls_acc_seen", "cls_acc_unseen", "flow_b_mean", "num_visible"):
        assert key in got and not got[key].requires_grad
    # the hook's inputs: docs/conventions.md §9 shapes, ground truth as a pose vector
    assert x3d.shape == (2, 16, 3) and x2d.shape == (2, 16, 2) and w2d.shape == (2, 16, 2) and K.shape == (2, 3, 3)
    torch.testing.assert_close(pose_gt, matrix_to_pose_vector(pose.q_pose))
    got["loss"].backward()
    assert out.weight_scale.grad is not None and out.flow.grad.abs().sum() > 0


def test_without_pose_loss():
    out, labels, _ = _output_and_labels()
    got = vpog_loss(out, labels)
    assert "pnp" not in got and "reg" not in got
    w = LossWeights()
    torch.testing.assert_close(got["loss"], got["cls"] + w.flow_weight * (got["flow_nll"] + w.invisible_penalty
                                                                        * got["flow_invisible"]))


def test_hook_protocol_and_errors():
    out, labels, pose = _output_and_labels()
    assert isinstance(RecordingPoseLoss(), PoseLoss)
    with pytest.raises(ValueError, match="pose_loss and pose_targets"):
        vpog_loss(out, labels, pose_loss=RecordingPoseLoss())
    wrong = VPOGOutput(**{**out.__dict__, "buddies": (out.buddies + 1) % 196})
    with pytest.raises(ValueError, match="ground-truth buddies"):
        vpog_loss(wrong, labels)
    vpog_loss(wrong, labels, check_buddies=False)  # the caller vouches for the values (no host sync)
    with pytest.raises(ValueError, match="ground-truth buddies"):  # a shape mismatch is still caught
        vpog_loss(VPOGOutput(**{**out.__dict__, "buddies": out.buddies[:, :1]}), labels, check_buddies=False)
    with pytest.raises(ValueError, match="q_pose"):
        vpog_loss(out, labels, pose_loss=RecordingPoseLoss(), pose_targets=pose._replace(q_pose=pose.q_pose[:, :3]))


def test_loss_weights_from_mapping():
    values = {"flow_weight": 2.0, "pnp_weight": 0.0, "reg_weight": 0.1, "invisible_penalty": 0.01}
    w = from_mapping(LossWeights, values, "loss")
    assert w.flow_weight == 2.0 and w.pnp_points == 512
    with pytest.raises(ValueError, match="flow_wieght"):
        from_mapping(LossWeights, {"flow_wieght": 1.0}, "loss")
    with pytest.raises(ValueError, match="pnp_weight"):
        LossWeights(pnp_weight=-1.0)


def test_with_the_epropnp_monte_carlo_loss():
    """The EPro-PnP loss module plugs into the hook as is (its PoseLossOutput is understood)."""
    pnp_loss = pytest.importorskip("vpog.pnp.loss")
    out, labels, pose = _output_and_labels()
    pose = pose._replace(q_K=torch.tensor([[200.0, 0, 111.5], [0, 200.0, 111.5], [0, 0, 1]]).expand(2, 3, 3))
    got = vpog_loss(out, labels, LossWeights(pnp_points=64), pose_loss=pnp_loss.MonteCarloPoseLoss(),
                    pose_targets=pose, generator=torch.Generator().manual_seed(0))
    for key in ("loss", "pnp", "reg", "reg_t", "reg_r", "pnp_valid"):
        assert key in got and torch.isfinite(got[key]), key
    got["loss"].backward()
    assert torch.isfinite(out.flow.grad).all() and torch.isfinite(out.flow_b.grad).all()
    assert out.weight_scale.grad is not None and torch.isfinite(out.weight_scale.grad)
