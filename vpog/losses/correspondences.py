"""2D-3D correspondences for PnP from the flow head's output (docs/conventions.md §4, §6).

Every pixel p' = (16 jx + u, 16 jy + v) of the buddy patch j of query patch i in template s gives

    x3d = T_s^-1 backproject(p', D_s(p'), K_s)       model frame, metres (no gradient: data)
    x2d = centre(i) + 16 flow[s, i, v, u]              query crop pixels (gradient to the flow)
    w2d = weight_scale / b[s, i, v, u]                 both axes (gradient to b and the scale)

A pixel is usable when its pair is a buddy pair (`valid_pair`), the template has depth there and, when a
template mask is given, it is on the object. `sample_correspondences` draws a fixed number of them per
sample (uniformly with replacement among the usable ones, so shapes stay static and nothing syncs with
the host); a sample with no usable pixel gets w2d = 0 everywhere (and x3d = 0, x2d = the crop centre),
which the PnP cost ignores.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vpog.geometry import CROP_SIZE, GRID_SIZE, NUM_PATCHES, PATCH_SIZE, backproject, invert_pose


class Correspondences(NamedTuple):
    """N sampled 2D-3D correspondences per sample."""

    x3d: torch.Tensor
    """[B, N, 3] float32, model frame, metres."""
    x2d: torch.Tensor
    """[B, N, 2] float32, query crop pixels (u, v)."""
    w2d: torch.Tensor
    """[B, N, 2] float32, >= 0 (0 for a draw with no usable pixel)."""
    valid: torch.Tensor
    """[B, N] bool: the draw is a usable pixel."""


def _patch_pixels(img: torch.Tensor) -> torch.Tensor:
    """[B, S, 224, 224] -> [B, S, 196, 16, 16] indexed [.., j, v, u]."""
    B, S = img.shape[:2]
    G, P = GRID_SIZE, PATCH_SIZE
    return img.reshape(B, S, G, P, G, P).permute(0, 1, 2, 4, 3, 5).reshape(B, S, NUM_PATCHES, P, P)


def sample_correspondences(
    flow: torch.Tensor,
    b: torch.Tensor,
    weight_scale: torch.Tensor,
    buddies: torch.Tensor,
    valid_pair: torch.Tensor,
    t_depth: torch.Tensor,
    t_K: torch.Tensor,
    t_pose: torch.Tensor,
    num_points: int,
    t_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Correspondences:
    """Draw `num_points` correspondences per sample from the flow of the buddy pairs.

    flow: [B, S, 196, 16, 16, 2] patch units; b: [B, S, 196, 16, 16] > 0; weight_scale: [] > 0.
    buddies: [B, S, 196] int64 template patch each flow was computed on.
    valid_pair: [B, S, 196] bool, the pair is a (ground-truth or accepted) buddy pair.
    t_depth: [B, S, 224, 224] template depth, metres (0 = none); t_K: [B, S, 3, 3] crop intrinsics;
    t_pose: [B, S, 4, 4] template T_m2c; t_mask: [B, S, 224, 224] bool or None.
    """
    P = PATCH_SIZE
    if flow.dim() != 6 or flow.shape[2:] != (NUM_PATCHES, P, P, 2):
        raise ValueError(f"flow must have shape [B, S, 196, 16, 16, 2], got {tuple(flow.shape)}")
    B, S = flow.shape[:2]
    expect = {
        "b": (b, (B, S, NUM_PATCHES, P, P)),
        "buddies": (buddies, (B, S, NUM_PATCHES)),
        "valid_pair": (valid_pair, (B, S, NUM_PATCHES)),
        "t_depth": (t_depth, (B, S, CROP_SIZE, CROP_SIZE)),
        "t_K": (t_K, (B, S, 3, 3)),
        "t_pose": (t_pose, (B, S, 4, 4)),
    }
    if t_mask is not None:
        expect["t_mask"] = (t_mask, (B, S, CROP_SIZE, CROP_SIZE))
    for name, (x, shape) in expect.items():
        if tuple(x.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(x.shape)}")
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    dev = flow.device
    bud = buddies.long().clamp(0, NUM_PATCHES - 1)
    gather_idx = bud[..., None, None].expand(B, S, NUM_PATCHES, P, P)
    depth = _patch_pixels(t_depth.float()).gather(2, gather_idx)  # [B, S, 196(i), 16, 16]
    usable = valid_pair.bool()[..., None, None] & (depth > 0) & torch.isfinite(depth)
    if t_mask is not None:
        usable = usable & _patch_pixels(t_mask.bool()).gather(2, gather_idx)
    usable = usable.reshape(B, -1)
    # uniform draw among usable pixels; the epsilon keeps multinomial defined for a sample with none
    probs = usable.float() + 1e-12
    idx = torch.multinomial(probs, num_points, replacement=True, generator=generator)  # [B, N]
    valid = usable.gather(1, idx)

    s, rem = idx // (NUM_PATCHES * P * P), idx % (NUM_PATCHES * P * P)
    i, rem = rem // (P * P), rem % (P * P)
    v, u = rem // P, rem % P
    j = bud.reshape(B, -1).gather(1, s * NUM_PATCHES + i)
    px = torch.stack([(j % GRID_SIZE) * P + u, (j // GRID_SIZE) * P + v], dim=-1).float()  # p' (u, v)
    z = depth.reshape(B, -1).gather(1, idx)
    z = torch.where(valid, z, torch.zeros_like(z))
    bidx = torch.arange(B, device=dev)[:, None]
    K_s = t_K.float()[bidx, s]  # [B, N, 3, 3]
    T_inv = invert_pose(t_pose.float())[bidx, s]  # [B, N, 4, 4]
    x_cam = backproject(px.reshape(-1, 1, 2), z.reshape(-1, 1), K_s.reshape(-1, 3, 3)).reshape(B, num_points, 3)
    x3d = (T_inv[..., :3, :3] @ x_cam.unsqueeze(-1)).squeeze(-1) + T_inv[..., :3, 3] * valid[..., None]

    centre = torch.stack([(i % GRID_SIZE) * P + (P - 1) / 2, (i // GRID_SIZE) * P + (P - 1) / 2], dim=-1)
    f = flow.reshape(B, -1, 2).gather(1, idx[..., None].expand(B, num_points, 2)).float()
    x2d = centre.float() + P * f
    x2d = torch.where(valid[..., None], x2d, torch.full_like(x2d, (CROP_SIZE - 1) / 2))
    bb = b.reshape(B, -1).gather(1, idx).float()
    w = torch.where(valid, weight_scale.float() / bb, torch.zeros_like(bb))
    return Correspondences(x3d, x2d, w.unsqueeze(-1).repeat(1, 1, 2), valid)
