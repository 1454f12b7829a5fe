"""Square crops as affine maps (SPEC §1, §3): boxes, jitter, the crop matrix M and resampling.

Pixel `(u, v)` has integer coordinates at pixel centres, so pixel i spans [i - 0.5, i + 0.5]. A BOP box
`[x, y, w, h]` covers pixels x..x+w-1 and y..y+h-1; its centre is `(x + (w - 1) / 2, y + (h - 1) / 2)`.
A square box of side `L` centred at `c` has its left edge at `c_x - L / 2`; the crop map is

    u_crop = s (u - (c_x - L / 2)) - 0.5,   s = size / L        (and the same for v)

so the box's edges land on the crop's edges and `K_crop = M K`. Resampling inverts M at every crop pixel
centre: RGB bilinear, depth and masks nearest, zeros outside the image.

References: GigaPose `src/utils/crop.py` (square box around the bbox, resize to 224).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def box_from_xywh(bbox: np.ndarray | list, scale: float = 1.0) -> tuple[float, float, float]:
    """BOP box [x, y, w, h] -> square box (centre u, centre v, side) with side = scale * max(w, h)."""
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise ValueError(f"bbox must have positive width and height, got {list(bbox)}")
    return x + (w - 1) / 2, y + (h - 1) / 2, scale * max(w, h)


def box_from_mask(mask: np.ndarray, scale: float = 1.0) -> tuple[float, float, float]:
    """Square box around the nonzero pixels of mask [H, W]; ValueError when the mask is empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise ValueError("mask is empty: no box around it")
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    return box_from_xywh([x0, y0, x1 - x0 + 1, y1 - y0 + 1], scale)


def jitter_box(box: tuple[float, float, float], rng: np.random.Generator, scale_jitter: float,
               shift_jitter: float) -> tuple[float, float, float]:
    """Training jitter: side *= U(1 - scale_jitter, 1 + scale_jitter), then
    centre += U(-shift_jitter, shift_jitter) * side."""
    cu, cv, side = box
    side = side * rng.uniform(1 - scale_jitter, 1 + scale_jitter)
    cu += rng.uniform(-shift_jitter, shift_jitter) * side
    cv += rng.uniform(-shift_jitter, shift_jitter) * side
    return cu, cv, side


def crop_matrix(box: tuple[float, float, float], size: int) -> np.ndarray:
    """Affine M [3, 3] (float64) from full-image pixels to the pixels of a size x size crop of `box`."""
    cu, cv, side = box
    if side <= 0:
        raise ValueError(f"box side must be positive, got {side}")
    s = size / side
    return np.array([[s, 0.0, -s * (cu - side / 2) - 0.5],
                     [0.0, s, -s * (cv - side / 2) - 0.5],
                     [0.0, 0.0, 1.0]])


def warp_crop(image: np.ndarray, M: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """Resample image [H, W] or [H, W, C] (any numeric dtype) into the size x size crop of M.

    mode "bilinear" or "nearest"; returns float32 [size, size] or [size, size, C], zeros outside.
    Only the source window the crop needs is converted to float, so large images stay cheap.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    H, W = image.shape[:2]
    Minv = np.linalg.inv(M)
    # source window covered by the crop (+1 px for bilinear neighbours), clipped to the image
    corners = Minv @ np.array([[-0.5, -0.5, size - 0.5, size - 0.5], [-0.5, size - 0.5, -0.5, size - 0.5],
                               [1, 1, 1, 1]])
    x0 = int(np.clip(np.floor(corners[0].min()) - 1, 0, W))
    x1 = int(np.clip(np.ceil(corners[0].max()) + 2, 0, W))
    y0 = int(np.clip(np.floor(corners[1].min()) - 1, 0, H))
    y1 = int(np.clip(np.ceil(corners[1].max()) + 2, 0, H))
    C = image.shape[2]
    if x1 <= x0 or y1 <= y0:  # the crop lies outside the image
        out = torch.zeros(size, size, C)
        return out[..., 0] if squeeze else out
    window = torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    h, w = y1 - y0, x1 - x0
    centres = torch.arange(size, dtype=torch.float64)
    # crop pixel centre -> source pixel (u, v), then to grid_sample's [-1, 1] (align_corners=False)
    u = (centres - float(M[0, 2])) / float(M[0, 0]) - x0
    v = (centres - float(M[1, 2])) / float(M[1, 1]) - y0
    gx = ((u + 0.5) / w * 2 - 1).float()
    gy = ((v + 0.5) / h * 2 - 1).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(window, grid, mode=mode, padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0)
    return out[..., 0] if squeeze else out
