"""2D-3D correspondences for PnP from buddies and dense flow (docs/conventions.md §4, §6).

For template s, query patch i with buddy patch j and pixel p' = (16 jx + u, 16 jy + v) of patch j:

    x3d = T_s^-1 backproject(p', D_s(p'), K_s)      model frame, metres
    x2d = centre(i) + 16 flow[s, i, v, u]          query crop pixels
    w2d = weight[s, i, v, u] (both axes)           e.g. scale / b (docs/conventions.md §6), or 1 for ground truth

A candidate exists where the buddy is a patch (0..195), the template pixel has depth and mask and the
weight is positive. From the B x S x 196 x 256 candidates of each query, at most `pixels_per_patch`
per (template, query patch) pair are kept (the largest weights, ties broken at random), then the
`max_points` largest weights overall: this keeps the problem small and spreads it over the object
instead of piling it on the few most confident patches. Unused slots are padded with zero weight
(and points on the template's optical axis), which leave the PnP cost unchanged.

Two front ends: `correspondences_from_labels` (ground truth: `patch_cls`, `dense_flow`,
`dense_visible`, unit weights) and `correspondences_from_output` (a `VPOGOutput`: predicted buddies,
flow and w2d = weight_scale / b, optionally times the buddy's classification probability).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vpog.geometry import GRID_SIZE, NUM_PATCHES, PATCH_SIZE, backproject, invert_pose, patch_centres, transform_points


class Correspondences(NamedTuple):
    """PnP inputs of B queries (N = max_points slots each; unused slots have w2d = 0).

    x3d: [B, N, 3] model frame, metres.   x2d: [B, N, 2] query crop pixels (u, v).
    w2d: [B, N, 2] weights (>= 0).        template: [B, N] int64 template index s, -1 for padding.
    query_patch: [B, N] int64 query patch i (0..195), -1 for padding.
    count: [B] int64 number of used slots.
    """

    x3d: torch.Tensor
    x2d: torch.Tensor
    w2d: torch.Tensor
    template: torch.Tensor
    query_patch: torch.Tensor
    count: torch.Tensor


def _check(buddies, flow, weight, t_depth, t_mask, t_K, t_pose) -> tuple[int, int, int, int]:
    if buddies.dim() != 3 or buddies.shape[2] != NUM_PATCHES or buddies.dtype.is_floating_point:
        raise ValueError(f"buddies must be an integer tensor [B, S, {NUM_PATCHES}], got {tuple(buddies.shape)} "
                         f"{buddies.dtype}")
    B, S = buddies.shape[:2]
    P = PATCH_SIZE
    want = {"flow": (flow, (B, S, NUM_PATCHES, P, P, 2)), "weight": (weight, (B, S, NUM_PATCHES, P, P)),
            "t_K": (t_K, (B, S, 3, 3)), "t_pose": (t_pose, (B, S, 4, 4))}
    for name, (t, shape) in want.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(t.shape)}")
    if t_depth.dim() != 4 or t_depth.shape[:2] != (B, S):
        raise ValueError(f"t_depth must have shape [B, S, H, W] with B = {B}, S = {S}, got {tuple(t_depth.shape)}")
    H, W = t_depth.shape[2:]
    if H != GRID_SIZE * P or W != GRID_SIZE * P:
        raise ValueError(f"t_depth must hold {GRID_SIZE * P}x{GRID_SIZE * P} crops, got {H}x{W}")
    if tuple(t_mask.shape) != (B, S, H, W):
        raise ValueError(f"t_mask must have shape [B, S, H, W] = {[B, S, H, W]}, got {tuple(t_mask.shape)}")
    return B, S, H, W


def build_correspondences(
    buddies: torch.Tensor,
    flow: torch.Tensor,
    weight: torch.Tensor,
    t_depth: torch.Tensor,
    t_mask: torch.Tensor,
    t_K: torch.Tensor,
    t_pose: torch.Tensor,
    max_points: int = 1024,
    pixels_per_patch: int = 16,
    generator: torch.Generator | None = None,
) -> Correspondences:
    """Correspondences from per-pixel flow and weights (see the module docstring).

    buddies: [B, S, 196] int64, buddy template patch per query patch; values outside 0..195 mean none.
    flow: [B, S, 196, 16, 16, 2] patch units, [.., v, u, :] indexed by the buddy's pixel (docs/conventions.md §4).
    weight: [B, S, 196, 16, 16] w2d of each pixel (>= 0; 0 = not used).
    t_depth: [B, S, 224, 224] template depth, metres (0 = empty). t_mask: [B, S, 224, 224] bool.
    t_K: [B, S, 3, 3] template crop intrinsics. t_pose: [B, S, 4, 4] template T_m2c, metres.
    max_points: N, slots per query. pixels_per_patch: cap per (template, query patch) pair (<= 256).
    generator: random tie-breaks between equal weights (a fixed seed by default: results reproduce).
    """
    B, S, H, W = _check(buddies, flow, weight, t_depth, t_mask, t_K, t_pose)
    if int(max_points) != max_points or max_points < 1:
        raise ValueError(f"max_points must be an integer >= 1, got {max_points}")
    if int(pixels_per_patch) != pixels_per_patch or not 1 <= pixels_per_patch <= PATCH_SIZE**2:
        raise ValueError(f"pixels_per_patch must be an integer in [1, {PATCH_SIZE**2}], got {pixels_per_patch}")
    dev = flow.device
    P, G = PATCH_SIZE, GRID_SIZE
    has = (buddies >= 0) & (buddies < NUM_PATCHES)  # [B, S, 196]
    j = torch.where(has, buddies, 0)
    off = torch.arange(P, device=dev)
    ov, ou = torch.meshgrid(off, off, indexing="ij")
    su = ((j % G) * P)[..., None] + ou.reshape(-1)  # [B, S, 196, 256]
    sv = ((j // G) * P)[..., None] + ov.reshape(-1)
    idx = (sv * W + su).reshape(B, S, -1)
    d = t_depth.reshape(B, S, H * W).gather(2, idx).reshape(B, S, NUM_PATCHES, P * P)
    m = t_mask.reshape(B, S, H * W).gather(2, idx).reshape(B, S, NUM_PATCHES, P * P)
    w = weight.reshape(B, S, NUM_PATCHES, P * P).float()
    ok = has[..., None] & m.bool() & (d > 0) & (w > 0) & torch.isfinite(w)
    fl = flow.reshape(B, S, NUM_PATCHES, P * P, 2)
    ok = ok & torch.isfinite(fl).all(dim=-1)
    # Rank by weight with a tiny random tie-break; unusable pixels rank last.
    if generator is None:
        generator = torch.Generator(device=dev).manual_seed(0)
    jitter = torch.rand(w.shape, device=dev, generator=generator)
    rank = torch.where(ok, w.clamp(max=1e30) * (1 + 1e-4 * jitter), -1.0 - jitter)
    k = int(pixels_per_patch)
    top_rank, top_pix = rank.topk(k, dim=-1)  # [B, S, 196, k]
    flat_rank = top_rank.reshape(B, -1)
    n = min(int(max_points), flat_rank.shape[1])
    _, sel = flat_rank.topk(n, dim=-1)  # [B, n] into (s, i, kk)
    s_idx = sel // (NUM_PATCHES * k)
    i_idx = (sel // k) % NUM_PATCHES
    pix = top_pix.reshape(B, -1).gather(1, sel)  # pixel 0..255 inside the buddy patch
    bidx = torch.arange(B, device=dev)[:, None]
    used = ok[bidx, s_idx, i_idx, pix]  # [B, n]
    uv = torch.stack([su[bidx, s_idx, i_idx, pix], sv[bidx, s_idx, i_idx, pix]], dim=-1).float()
    depth = d[bidx, s_idx, i_idx, pix]
    K_s = t_K[bidx, s_idx].float()  # [B, n, 3, 3]
    T_inv = invert_pose(t_pose[bidx, s_idx].float())
    # one camera per point: K [B, n, 3, 3] pairs with uv [B, n, 1, 2] (geometry's broadcasting rule)
    x_cam = backproject(uv[:, :, None], torch.where(used, depth, 1.0)[:, :, None], K_s)  # [B, n, 1, 3]
    x3d = transform_points(T_inv, x_cam).squeeze(-2)
    centres = patch_centres(dev)[i_idx]  # [B, n, 2]
    x2d = centres + P * fl[bidx, s_idx, i_idx, pix].float()
    w2d = torch.where(used, w[bidx, s_idx, i_idx, pix], 0.0)[..., None].expand(B, n, 2)
    x3d = torch.where(used[..., None], x3d, x3d.new_zeros(()))  # padding: the model origin, weight 0
    x2d = torch.where(used[..., None], x2d, centres)
    if n < max_points:  # fewer candidates than slots (never with 224 crops and max_points <= 50k)
        pad = int(max_points) - n
        x3d = torch.cat([x3d, x3d.new_zeros(B, pad, 3)], 1)
        x2d = torch.cat([x2d, x2d.new_full((B, pad, 2), W / 2)], 1)
        w2d = torch.cat([w2d, w2d.new_zeros(B, pad, 2)], 1)
        used = torch.cat([used, used.new_zeros(B, pad)], 1)
        s_idx = torch.cat([s_idx, s_idx.new_zeros(B, pad)], 1)
        i_idx = torch.cat([i_idx, i_idx.new_zeros(B, pad)], 1)
    template = torch.where(used, s_idx, -1)
    query_patch = torch.where(used, i_idx, -1)
    return Correspondences(x3d.contiguous(), x2d.contiguous(), w2d.contiguous(), template, query_patch,
                           used.sum(dim=1))


def correspondences_from_labels(labels, t_depth, t_mask, t_K, t_pose, max_points: int = 1024,
                                pixels_per_patch: int = 16, generator=None) -> Correspondences:
    """Ground-truth correspondences: `FlowLabels` buddies and flow, weight 1 on visible pixels."""
    B, S = labels.patch_cls.shape[:2]
    return build_correspondences(
        labels.patch_cls.reshape(B, S, NUM_PATCHES),
        labels.dense_flow.reshape(B, S, NUM_PATCHES, PATCH_SIZE, PATCH_SIZE, 2),
        labels.dense_visible.reshape(B, S, NUM_PATCHES, PATCH_SIZE, PATCH_SIZE).float(),
        t_depth, t_mask, t_K, t_pose, max_points, pixels_per_patch, generator,
    )


def correspondences_from_output(out, t_depth, t_mask, t_K, t_pose, max_points: int = 1024,
                                pixels_per_patch: int = 16, weight_by_probability: bool = True,
                                min_probability: float = 0.0, drop_unseen: bool = True,
                                generator=None) -> Correspondences:
    """Predicted correspondences from a `VPOGOutput` (its buddies, flow and w2d = weight_scale / b).

    weight_by_probability: multiply w2d by the softmax probability of the buddy (197 classes).
    min_probability: drop pairs whose buddy probability is lower. drop_unseen: drop query patches
    whose most likely class is "unseen" (196).
    """
    B, S = out.logits.shape[:2]
    prob = out.logits.float().softmax(dim=-1)  # [B, S, 196, 197]
    buddies = out.buddies.reshape(B, S, NUM_PATCHES)
    p_buddy = prob.gather(-1, buddies.clamp(0, NUM_PATCHES - 1)[..., None]).squeeze(-1)
    keep = p_buddy >= min_probability
    if drop_unseen:
        keep = keep & (prob.argmax(dim=-1) != NUM_PATCHES)
    buddies = torch.where(keep, buddies, -1)
    w = out.weight_scale.float() / out.flow_b.float()
    if weight_by_probability:
        w = w * p_buddy[..., None, None]
    return build_correspondences(buddies, out.flow, w, t_depth, t_mask, t_K, t_pose, max_points,
                                 pixels_per_patch, generator)
