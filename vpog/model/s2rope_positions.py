"""Token positions (y, x, s1, s2) for S2RoPE: patch grid and the tangent chart of viewing directions
(docs/conventions.md §5).

The chart at the reference direction `d_ref` (unit, model frame) maps a unit direction `d` to

    gamma = arccos(clamp(d . d_ref, -1, 1)),   w = d - (d . d_ref) d_ref,
    (s1, s2) = gamma (w . e1, w . e2) / |w|

(the azimuthal-equidistant / log map of the sphere), with `(0, 0)` when `|w| < 1e-6` and
`gamma < pi/2`, and `(pi, 0)` at the antipode. `e1`, `e2` are rows 0 and 1 of `R_ref` (the camera's
x and y axes in model coordinates, `R_ref` being the rotation of the reference template's `T_m2c`),
Gram-Schmidt orthonormalised against `d_ref`; so s1 follows the reference image's x and s2 its y.
The chart is computed in float64 and returned as float32.

Sequence layouts (flat patch index j = 14 iy + ix, as `vpog.geometry`):
- frame of one image: 196 patch tokens at (iy, ix, 0, 0), then, for templates, the "unseen" token at 0;
- group: [query 196 at (iy, ix, 0, 0)] + per template s [196 at (iy, ix, s1_s, s2_s), unseen at 0].
"""

from __future__ import annotations

import math

import torch

from vpog.geometry import GRID_SIZE, NUM_PATCHES

TOKENS_PER_TEMPLATE = NUM_PATCHES + 1  # 196 patches + the unseen token


def chart_axes(d_ref: torch.Tensor, ref_R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal chart axes (e1, e2) at d_ref [..., 3] from R_ref [..., 3, 3] rows 0 and 1. -> [..., 3] each.

    Same dtype as the inputs; e1, e2 and d_ref are mutually orthogonal.
    """
    d = d_ref / d_ref.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r0, r1 = ref_R[..., 0, :], ref_R[..., 1, :]
    e1 = r0 - (r0 * d).sum(-1, keepdim=True) * d
    e1 = e1 / e1.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e2 = r1 - (r1 * d).sum(-1, keepdim=True) * d - (r1 * e1).sum(-1, keepdim=True) * e1
    e2 = e2 / e2.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return e1, e2


def reference_rotation(template_dirs: torch.Tensor, d_ref: torch.Tensor, template_R: torch.Tensor) -> torch.Tensor:
    """R_ref: the rotation of the template whose viewing direction is nearest to d_ref (max d . d_ref).

    template_dirs: [B, S, 3]; d_ref: [B, 3]; template_R: [B, S, 3, 3] rotations of the templates' T_m2c.
    Returns [B, 3, 3]. d_ref is one of the templates' directions (docs/conventions.md §3), so this finds that template.
    """
    B, S = template_dirs.shape[:2]
    if d_ref.shape != (B, 3):
        raise ValueError(f"d_ref must have shape [B, 3] = [{B}, 3], got {tuple(d_ref.shape)}")
    if template_R.shape != (B, S, 3, 3):
        raise ValueError(f"template_R must have shape [B, S, 3, 3] = [{B}, {S}, 3, 3], got {tuple(template_R.shape)}")
    best = (template_dirs * d_ref[:, None]).sum(-1).argmax(dim=1)  # [B]
    return template_R[torch.arange(B, device=template_R.device), best]


def tangent_chart(dirs: torch.Tensor, d_ref: torch.Tensor, ref_R: torch.Tensor) -> torch.Tensor:
    """(s1, s2) of viewing directions in the tangent chart at d_ref (radians of view angle).

    dirs: [B, S, 3] template viewing directions, model frame (normalised here).
    d_ref: [B, 3] reference direction, model frame (normalised here).
    ref_R: [B, 3, 3] rotation of the reference template's T_m2c.
    Returns [B, S, 2] float32; |(s1, s2)| is the angle between d and d_ref.
    """
    if dirs.dim() != 3 or dirs.shape[-1] != 3:
        raise ValueError(f"dirs must have shape [B, S, 3], got {tuple(dirs.shape)}")
    B = dirs.shape[0]
    if d_ref.shape != (B, 3):
        raise ValueError(f"d_ref must have shape [B, 3] = [{B}, 3], got {tuple(d_ref.shape)}")
    if ref_R.shape != (B, 3, 3):
        raise ValueError(f"ref_R must have shape [B, 3, 3] = [{B}, 3, 3], got {tuple(ref_R.shape)}")
    d = dirs.to(torch.float64)
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = d_ref.to(torch.float64)
    r = r / r.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    e1, e2 = chart_axes(r, ref_R.to(torch.float64))
    cos = (d * r[:, None]).sum(-1).clamp(-1.0, 1.0)  # [B, S]
    gamma = torch.arccos(cos)
    w = d - cos[..., None] * r[:, None]
    w_norm = w.norm(dim=-1)
    degenerate = w_norm < 1e-6
    scale = gamma / torch.where(degenerate, torch.ones_like(w_norm), w_norm)
    s = torch.stack([(w * e1[:, None]).sum(-1), (w * e2[:, None]).sum(-1)], dim=-1) * scale[..., None]
    antipode = torch.tensor([math.pi, 0.0], dtype=s.dtype, device=s.device)
    fallback = torch.where((gamma < math.pi / 2)[..., None], torch.zeros_like(s), antipode.expand_as(s))
    s = torch.where(degenerate[..., None], fallback, s)
    return s.to(torch.float32)


def patch_grid_positions(device=None) -> torch.Tensor:
    """(y, x) = (iy, ix) of the 196 patches in flat order j = 14 iy + ix. -> [196, 2] float32."""
    i = torch.arange(GRID_SIZE, device=device, dtype=torch.float32)
    iy, ix = torch.meshgrid(i, i, indexing="ij")
    return torch.stack([iy.reshape(-1), ix.reshape(-1)], dim=-1)


def frame_positions(with_unseen: bool, device=None) -> torch.Tensor:
    """Positions of one image's tokens for frame attention: 196 patches (+ the unseen token at 0). -> [N, 4]."""
    pos = torch.zeros(NUM_PATCHES + int(with_unseen), 4, device=device, dtype=torch.float32)
    pos[:NUM_PATCHES, :2] = patch_grid_positions(device)
    return pos


def group_positions(chart: torch.Tensor) -> torch.Tensor:
    """Positions of the global sequence [query 196, then per template 196 patches + unseen].

    chart: [B, S, 2] float32 (s1, s2) of each template (from `tangent_chart`).
    Returns [B, 196 + S * 197, 4] float32.
    """
    if chart.dim() != 3 or chart.shape[-1] != 2:
        raise ValueError(f"chart must have shape [B, S, 2], got {tuple(chart.shape)}")
    B, S, _ = chart.shape
    device = chart.device
    grid = patch_grid_positions(device)  # [196, 2]
    query = torch.zeros(B, NUM_PATCHES, 4, device=device, dtype=torch.float32)
    query[..., :2] = grid
    tmpl = torch.zeros(B, S, TOKENS_PER_TEMPLATE, 4, device=device, dtype=torch.float32)
    tmpl[:, :, :NUM_PATCHES, :2] = grid
    tmpl[:, :, :NUM_PATCHES, 2:] = chart.to(torch.float32)[:, :, None, :]
    return torch.cat([query, tmpl.reshape(B, S * TOKENS_PER_TEMPLATE, 4)], dim=1)
