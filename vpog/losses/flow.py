"""Dense flow loss (docs/conventions.md §7): Laplace negative log-likelihood on visible pixels, penalty on 1/b
elsewhere.

For a (template s, query patch i) pair whose label is a buddy patch (0..195) and its 16x16 pixels
(docs/conventions.md §4 `dense_flow`, `dense_visible`), with predicted flow f (patch units) and Laplace scale b > 0:

    nll       = sum_vis ( |f - f_gt|_1 / b + 2 log b ) / n_vis          (the two axes share b)
    invisible = sum_inv ( 1 / b ) / n_inv

where `vis` are the visible pixels and `inv` the other pixels of buddy pairs (the template pixel has no
depth, or is occluded or outside the query). The penalty pushes b up where the flow cannot be right, so
those pixels get small PnP weights w2d = scale / b. Pairs labelled -1 or unseen are not counted: the
flow head ran on a meaningless pair there. All in float32; an empty set gives 0.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from vpog.geometry import NUM_PATCHES, PATCH_SIZE


class FlowLossTerms(NamedTuple):
    """The flow loss's parts, float32 scalars (`num_*` carry no gradient)."""

    nll: torch.Tensor
    invisible: torch.Tensor
    num_visible: torch.Tensor
    num_invisible: torch.Tensor


def _pairs(x: torch.Tensor, name: str, B: int, S: int, tail: tuple[int, ...]) -> torch.Tensor:
    ok = x.dim() in (3 + len(tail), 4 + len(tail)) and x.shape[:2] == (B, S)
    ok = ok and tuple(x.shape[x.dim() - len(tail):]) == tail and math.prod(x.shape[2:]) == NUM_PATCHES * math.prod(tail)
    if not ok:
        rest = "".join(f", {v}" for v in tail)
        raise ValueError(
            f"{name} must have shape [B, S, 14, 14{rest}] or [B, S, 196{rest}] with B = {B}, S = {S}, "
            f"got {tuple(x.shape)}"
        )
    return x.reshape((B, S, NUM_PATCHES) + tail)


def flow_loss(
    flow: torch.Tensor,
    b: torch.Tensor,
    gt_flow: torch.Tensor,
    gt_visible: torch.Tensor,
    patch_cls: torch.Tensor,
) -> FlowLossTerms:
    """Laplace NLL and invisible-pixel penalty of the predicted dense flow.

    flow: [B, S, 196, 16, 16, 2] predicted flow on the ground-truth buddies (patch units).
    b: [B, S, 196, 16, 16] Laplace scale, > 0.
    gt_flow: [B, S, 14, 14, 16, 16, 2] or [B, S, 196, 16, 16, 2] docs/conventions.md §4 `dense_flow`.
    gt_visible: [B, S, 14, 14, 16, 16] or [B, S, 196, 16, 16] bool `dense_visible`.
    patch_cls: [B, S, 14, 14] or [B, S, 196] int64 labels (selects the buddy pairs).
    """
    P = PATCH_SIZE
    if flow.dim() != 6 or flow.shape[2:] != (NUM_PATCHES, P, P, 2):
        raise ValueError(f"flow must have shape [B, S, 196, 16, 16, 2], got {tuple(flow.shape)}")
    B, S = flow.shape[:2]
    if b.shape != flow.shape[:-1]:
        raise ValueError(f"b must have shape {tuple(flow.shape[:-1])} (flow's without the last axis), "
                         f"got {tuple(b.shape)}")
    gt_flow = _pairs(gt_flow, "gt_flow", B, S, (P, P, 2)).float()
    gt_visible = _pairs(gt_visible, "gt_visible", B, S, (P, P)).bool()
    cls = _pairs(patch_cls, "patch_cls", B, S, ())
    buddy = ((cls >= 0) & (cls < NUM_PATCHES))[..., None, None]  # [B, S, 196, 1, 1]
    vis = gt_visible & buddy
    inv = ~gt_visible & buddy
    b = b.float()
    err = (flow.float() - gt_flow).abs().sum(-1)
    # where() keeps masked-out pixels (possibly huge or non-finite errors) out of the sum and its gradient
    per_px = torch.where(vis, err / b + 2 * torch.log(b), torch.zeros_like(b))
    n_vis = vis.sum()
    n_inv = inv.sum()
    nll = per_px.sum() / n_vis.clamp_min(1).float()
    invisible = torch.where(inv, 1.0 / b, torch.zeros_like(b)).sum() / n_inv.clamp_min(1).float()
    return FlowLossTerms(nll, invisible, n_vis.float(), n_inv.float())
