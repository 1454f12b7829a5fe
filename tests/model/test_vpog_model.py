"""The full VPOG network on the tiny config: shapes, dtypes, gradients, one training step, checkpointing,
bf16 autocast, symmetries, input checks."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from model_helpers import make_batch, model_inputs, reprojection_pose_loss, tiny_config

from vpog.geometry import quaternion_to_matrix
from vpog.losses import LossWeights, vpog_loss
from vpog.model import VPOG, VPOGOutput, blocks, inputs_from_batch, reference_rotation


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return VPOG(tiny_config())


def _loss(model, batch, seed=0):
    out = model(**model_inputs(batch))
    return vpog_loss(out, batch.labels, LossWeights(pnp_points=64), pose_loss=reprojection_pose_loss,
                     pose_targets=batch.pose, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_dtypes(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(**model_inputs(batch))
        inf = model(**model_inputs(batch, with_buddies=False))
    B, S = batch.template_dirs.shape[:2]
    assert isinstance(out, VPOGOutput)
    assert out.logits.shape == (B, S, 196, 197) and out.logits.dtype == torch.float32
    assert out.flow.shape == (B, S, 196, 16, 16, 2) and out.flow.dtype == torch.float32
    assert out.flow_b.shape == (B, S, 196, 16, 16) and out.flow_b.dtype == torch.float32
    assert (out.flow_b >= model.cfg.heads.flow_b_min).all()
    assert out.buddies.shape == (B, S, 196) and out.buddies.dtype == torch.int64
    torch.testing.assert_close(out.buddies, batch.labels.patch_cls.reshape(B, S, 196).clamp(0, 195))
    assert out.chart.shape == (B, S, 2)
    torch.testing.assert_close(out.chart[:, 0], torch.zeros(B, 2), atol=1e-6, rtol=0)  # d_ref = template 0
    assert out.weight_scale.dim() == 0
    assert out.correspondence_weights().shape == (B, S, 196, 16, 16, 2)
    # the flow starts near "the buddy patch sits on the query patch": ((u - 7.5) / 16, (v - 7.5) / 16)
    offs = (torch.arange(16.0) - 7.5) / 16
    assert (out.flow[..., 0] - offs[None, :]).abs().max() < 0.05
    assert (out.flow[..., 1] - offs[:, None]).abs().max() < 0.05
    # inference: the flow runs on the predicted buddies (argmax over the 196 patches)
    torch.testing.assert_close(inf.buddies, inf.logits[..., :196].argmax(-1))
    torch.testing.assert_close(inf.logits, out.logits)
    assert out.predicted_cls().max() <= 196


def test_gradients_reach_every_parameter(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    losses = _loss(model, batch)
    for key in ("loss", "cls", "flow_nll", "flow_invisible", "pnp"):
        assert torch.isfinite(losses[key]), key
    losses["loss"].backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
            or p.grad.abs().sum() == 0]
    assert dead == []


def test_one_step_lowers_the_loss():
    torch.manual_seed(1)
    model = VPOG(tiny_config()).train()
    batch = make_batch(seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    before = _loss(model, batch)["loss"]
    before.backward()
    opt.step()
    with torch.no_grad():
        after = _loss(model, batch)["loss"]
    assert after < before - 1e-3, (float(before), float(after))


def test_activation_checkpointing_same_loss_and_grads(batch, monkeypatch):
    torch.manual_seed(2)
    model = VPOG(tiny_config(depth=1)).train()
    ckpt = copy.deepcopy(model)
    ckpt.encoder.cfg.activation_checkpointing = True
    ckpt.group_attention.cfg.activation_checkpointing = True
    calls = []
    mlp_forward = blocks.Mlp.forward
    monkeypatch.setattr(blocks.Mlp, "forward", lambda self, x: calls.append(1) or mlp_forward(self, x))
    results, counts = [], []
    for m in (model, ckpt):
        calls.clear()
        m.zero_grad(set_to_none=True)
        loss = _loss(m, batch)["loss"]
        loss.backward()
        counts.append(len(calls))
        results.append((loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    assert counts[1] == 2 * counts[0]  # every block ran again in the backward pass
    torch.testing.assert_close(results[0][0], results[1][0])
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_bf16_autocast_finite(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**model_inputs(batch))
        losses = vpog_loss(out, batch.labels, LossWeights(pnp_points=32), pose_loss=reprojection_pose_loss,
                           pose_targets=batch.pose)
    assert out.logits.dtype == torch.float32 and out.flow.dtype == torch.float32
    assert out.flow_b.dtype == torch.float32
    for v in losses.values():
        assert torch.isfinite(v)
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        ref = model(**model_inputs(batch)).logits
    # same network in bf16: logits agree to bf16 accuracy
    assert (out.logits.detach() - ref).abs().max() < 0.1 * ref.abs().max()


def test_object_frame_rotation_invariance(model, batch):
    """Rotating the model frame (template directions, d_ref and R_ref together) changes nothing."""
    model.eval()
    G = quaternion_to_matrix(torch.tensor([[0.3, -0.5, 0.7, 0.2]]))
    rotated = dict(model_inputs(batch))
    rotated["template_dirs"] = batch.template_dirs @ G.transpose(-1, -2)
    rotated["d_ref"] = (G @ batch.d_ref[..., None])[..., 0]
    rotated["ref_R"] = batch.ref_R @ G.transpose(-1, -2)
    with torch.no_grad():
        a = model(**model_inputs(batch))
        b = model(**rotated)
    torch.testing.assert_close(b.chart, a.chart, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-3, rtol=1e-4)


def test_template_permutation_equivariance(model, batch):
    model.eval()
    batch = make_batch(S=3, seed=5)
    perm = torch.tensor([2, 0, 1])
    permuted = dict(model_inputs(batch))
    permuted["template_images"] = batch.template_images[:, perm]
    permuted["template_dirs"] = batch.template_dirs[:, perm]
    permuted["buddies"] = batch.labels.patch_cls[:, perm]
    with torch.no_grad():
        a = model(**model_inputs(batch))
        b = model(**permuted)
    torch.testing.assert_close(b.logits, a.logits[:, perm], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.flow, a.flow[:, perm], atol=1e-4, rtol=1e-4)


def test_input_checks(model, batch):
    args = model_inputs(batch)
    for name, bad in (
        ("query_images", batch.query_images[..., :200]),
        ("template_images", batch.template_images[:, :, :1]),
        ("template_dirs", batch.template_dirs[:, :1]),
        ("d_ref", batch.d_ref[:, :2]),
        ("ref_R", batch.ref_R[:, :2]),
        ("buddies", batch.labels.patch_cls[:, :, :3]),
        ("buddies", batch.labels.patch_cls.float()),
    ):
        with pytest.raises(ValueError, match=name):
            model(**{**args, name: bad})


def test_inputs_from_a_loader_batch(model):
    """A loader batch (docs/conventions.md §3 field names; RGB in [0, 1]) maps to the forward's arguments."""
    model.eval()
    b = make_batch(S=3, seed=7)
    # d_ref is the second template's direction: R_ref must be that template's rotation
    b.d_ref = b.template_dirs[:, 1].clone()
    loader = SimpleNamespace(images=torch.cat([b.query_images[:, None], b.template_images], dim=1),
                             template_dirs=b.template_dirs, d_ref=b.d_ref, T_m2c=b.T_m2c)
    args = inputs_from_batch(loader, buddies=b.labels.patch_cls)
    torch.testing.assert_close(args["ref_R"], b.T_m2c[:, 2, :3, :3])
    torch.testing.assert_close(args["query_images"], b.query_images)
    with torch.no_grad():
        a = model(**args)
        c = model(**{**model_inputs(b), "d_ref": b.d_ref, "ref_R": b.T_m2c[:, 2, :3, :3]})
    torch.testing.assert_close(a.logits, c.logits)
    with pytest.raises(ValueError, match="template_R"):
        reference_rotation(b.template_dirs, b.d_ref, b.T_m2c[:, :2, :3, :3])


def test_normalisation_is_the_encoder_config(model):
    mean = torch.tensor(model.cfg.encoder.image_mean).view(3, 1, 1).expand(3, 4, 4)
    torch.testing.assert_close(model.normalize(mean), torch.zeros(3, 4, 4))
    std = torch.tensor(model.cfg.encoder.image_std).view(3, 1, 1)
    torch.testing.assert_close(model.normalize(mean + std), torch.ones(3, 4, 4))
