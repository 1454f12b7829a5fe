"""VPOG's training loss (docs/conventions.md §7): classification + flow (+ pose through a pluggable EPro-PnP loss).

    L = L_cls + flow_weight (L_nll + invisible_penalty L_inv) + pnp_weight L_pnp (+ reg_weight L_reg)

Each term comes back separately for logging. The pose term is a hook: any callable matching
`PoseLoss` (the EPro-PnP Monte Carlo KL loss module is meant to) receives correspondences sampled from
the flow head's output (`vpog.losses.correspondences`) with the query's intrinsics and ground-truth pose.

`PoseLoss` interface:

    pose_loss(x3d [B, N, 3], x2d [B, N, 2], w2d [B, N, 2], K [B, 3, 3], pose_gt [B, 7])
        -> scalar tensor L_pnp, or a pair (L_pnp, L_reg) when it also returns the derivative regulariser,
           or an object with fields `loss_mc` (L_pnp) and `loss_reg` (L_reg) -- `vpog.pnp.loss.MonteCarloPoseLoss`'s
           PoseLossOutput (its `loss_t`, `loss_r` and `valid` are logged as reg_t, reg_r, pnp_valid)

    x3d model frame metres, x2d query crop pixels, w2d >= 0 (0 = ignore the point), K the query crop's
    intrinsics, pose_gt the query's T_m2c as [tx, ty, tz, qw, qx, qy, qz] (metres, scalar-first).
    Gradients must flow to x2d and w2d; x3d comes from data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from vpog.geometry import NUM_PATCHES, matrix_to_pose_vector
from vpog.losses.classification import classification_accuracy, classification_loss
from vpog.losses.correspondences import sample_correspondences
from vpog.losses.flow import flow_loss


@runtime_checkable
class PoseLoss(Protocol):
    """A pose loss on 2D-3D correspondences (see the module docstring)."""

    def __call__(
        self, x3d: torch.Tensor, x2d: torch.Tensor, w2d: torch.Tensor, K: torch.Tensor, pose_gt: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(kw_only=True)
class LossWeights:
    """Weights of the loss terms; keys match the `loss:` section of `vpog/config/train.yaml`."""

    flow_weight: float = 1.0
    """Weight of the flow loss (NLL + invisible penalty)."""
    pnp_weight: float = 0.1
    """Weight of the EPro-PnP pose loss (used only when a pose loss is given)."""
    reg_weight: float = 0.1
    """Weight of the pose loss's derivative regulariser (when it returns one)."""
    invisible_penalty: float = 0.01
    """Weight of the 1/b penalty at invisible pixels, inside the flow loss."""
    pnp_points: int = 512
    """Correspondences drawn per sample for the pose loss."""

    def __post_init__(self) -> None:
        for f in ("flow_weight", "pnp_weight", "reg_weight", "invisible_penalty"):
            if getattr(self, f) < 0:
                raise ValueError(f"loss.{f} must be >= 0, got {getattr(self, f)}")
        if self.pnp_points < 1:
            raise ValueError(f"loss.pnp_points must be >= 1, got {self.pnp_points}")


class PoseTargets(NamedTuple):
    """What the pose loss needs beyond the network's output (one query, S templates per sample)."""

    t_depth: torch.Tensor
    """[B, S, 224, 224] template depth, metres (0 = none)."""
    t_K: torch.Tensor
    """[B, S, 3, 3] template crop intrinsics."""
    t_pose: torch.Tensor
    """[B, S, 4, 4] template T_m2c."""
    q_K: torch.Tensor
    """[B, 3, 3] query crop intrinsics."""
    q_pose: torch.Tensor
    """[B, 4, 4] query T_m2c (ground truth), or [B, 7] pose vector."""
    t_mask: torch.Tensor | None = None
    """[B, S, 224, 224] bool template masks, or None."""


def _pose_terms(result) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """(L_pnp, L_reg or None, extra logging terms) from what a PoseLoss returned."""
    if hasattr(result, "loss_mc"):  # vpog.pnp.loss.PoseLossOutput
        extra = {}
        for name, key in (("loss_t", "reg_t"), ("loss_r", "reg_r")):
            if isinstance(getattr(result, name, None), torch.Tensor):
                extra[key] = getattr(result, name).detach()
        if isinstance(getattr(result, "valid", None), torch.Tensor):
            extra["pnp_valid"] = result.valid.float().mean()
        return result.loss_mc, getattr(result, "loss_reg", None), extra
    if isinstance(result, tuple):
        if len(result) != 2:
            raise ValueError(f"pose_loss must return a scalar or (L_pnp, L_reg), got a tuple of {len(result)}")
        return result[0], result[1], {}
    return result, None, {}


def vpog_loss(
    output,
    labels,
    weights: LossWeights | None = None,
    pose_loss: PoseLoss | None = None,
    pose_targets: PoseTargets | None = None,
    generator: torch.Generator | None = None,
    check_buddies: bool = True,
) -> dict[str, torch.Tensor]:
    """The total loss and its parts.

    output: `vpog.model.VPOGOutput` of a forward pass on the ground-truth buddies (`buddies=patch_cls`).
    labels: docs/conventions.md §4 labels with fields `patch_cls` [B,S,14,14], `dense_flow` [B,S,14,14,16,16,2],
        `dense_visible` [B,S,14,14,16,16] (e.g. `vpog.ops.patch_flow_labels`'s FlowLabels).
    pose_loss / pose_targets: both or neither; with them the pose term is added.
    check_buddies: verify that `output.buddies` equals the clamped `patch_cls` (a device-to-host sync on
        GPUs; a training step that built the forward from `labels.patch_cls` itself may pass False).
    Returns {"loss": total (differentiable), "cls", "flow_nll", "flow_invisible", with a pose loss "pnp",
    "pnp_points_valid" and, when returned, "reg" ("reg_t", "reg_r", "pnp_valid"), then "cls_acc",
    "cls_acc_seen", "cls_acc_unseen", "flow_b_mean", "num_visible"}; all float32 scalars.
    """
    weights = weights if weights is not None else LossWeights()
    if (pose_loss is None) != (pose_targets is None):
        raise ValueError("pose_loss and pose_targets must be given together (the pose term needs both)")
    patch_cls = labels.patch_cls
    B, S = output.logits.shape[:2]
    cls = classification_loss(output.logits, patch_cls)
    flat_cls = patch_cls.reshape(B, S, NUM_PATCHES).long()
    gt_buddy = flat_cls.clamp(0, NUM_PATCHES - 1)
    if output.buddies.shape != gt_buddy.shape or (check_buddies and not torch.equal(output.buddies, gt_buddy)):
        raise ValueError(
            "output must come from a forward pass on the ground-truth buddies (buddies=labels.patch_cls): "
            "output.buddies differs from patch_cls"
        )
    fl = flow_loss(output.flow, output.flow_b, labels.dense_flow, labels.dense_visible, patch_cls)
    flow_total = fl.nll + weights.invisible_penalty * fl.invisible
    total = cls + weights.flow_weight * flow_total
    parts: dict[str, torch.Tensor] = {"cls": cls, "flow_nll": fl.nll, "flow_invisible": fl.invisible}

    if pose_loss is not None:
        valid_pair = (flat_cls >= 0) & (flat_cls < NUM_PATCHES)
        corr = sample_correspondences(
            output.flow, output.flow_b, output.weight_scale, output.buddies, valid_pair,
            pose_targets.t_depth, pose_targets.t_K, pose_targets.t_pose, weights.pnp_points,
            t_mask=pose_targets.t_mask, generator=generator,
        )
        q_pose = pose_targets.q_pose
        if q_pose.shape == (B, 4, 4):
            q_pose = matrix_to_pose_vector(q_pose.float())
        elif q_pose.shape != (B, 7):
            raise ValueError(f"pose_targets.q_pose must have shape [B, 4, 4] or [B, 7], got {tuple(q_pose.shape)}")
        if pose_targets.q_K.shape != (B, 3, 3):
            raise ValueError(f"pose_targets.q_K must have shape [B, 3, 3], got {tuple(pose_targets.q_K.shape)}")
        result = pose_loss(corr.x3d, corr.x2d, corr.w2d, pose_targets.q_K.float(), q_pose.float())
        pnp, reg, extra = _pose_terms(result)
        total = total + weights.pnp_weight * pnp
        parts["pnp"] = pnp
        if reg is not None:
            total = total + weights.reg_weight * reg
            parts["reg"] = reg
        parts.update(extra)
        parts["pnp_points_valid"] = corr.valid.float().mean()

    out = {"loss": total}
    out.update(parts)
    out.update(classification_accuracy(output.logits, patch_cls))
    with torch.no_grad():
        out["flow_b_mean"] = output.flow_b.float().mean()
        out["num_visible"] = fl.num_visible
    return out
