"""Square crops as affine maps (docs/conventions.md §1, §3): boxes, jitter, the crop matrix M and resampling.

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


def box_from_xywh(bbox: np.ndarray | list, scale: float = 1.0) -> tuple[float, float, float]:
    """BOP box [x, y, w, h] -> square box (centre u, centre v, side) with side = scale * max(w, h)."""
    x, y, w, h = (float(v) for v in bbox)
    if w <= 0 or h <= 0:
        raise ValueError(f"bbox must have positive width and height, got {list(bbox)}")
    return x + (w - 1) / 2, y + (h - 1) / 2, scale * max(w, h)


def box_from_mask(mask: np.ndarray, scale: float = 1.0) -> tuple[float, float, float]:
    """Square box around the nonzero pixels of mask [H, W]; ValueError when the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: no box around it")
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
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


def _taps(coords: np.ndarray, n: int, mode: str):
    """Source indices (into a copy padded by one zero pixel on each side) and weights for 1-D resampling."""
    if mode == "nearest":
        idx = np.floor(coords + 0.5).astype(np.int64)
        return (np.clip(idx, -1, n) + 1,), (np.ones_like(coords),)
    lo = np.floor(coords)
    frac = coords - lo
    lo = lo.astype(np.int64)
    return (np.clip(lo, -1, n) + 1, np.clip(lo + 1, -1, n) + 1), (1.0 - frac, frac)


def warp_crop(image: np.ndarray, M: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Resample image [H, W] or [H, W, C] (any numeric dtype) into the size x size crop of M.

    mode "bilinear" or "nearest"; returns float32 [size, size] or [size, size, C], zeros outside the image
    (the same values as torch's grid_sample with align_corners=False and zero padding). M is an axis-aligned
    scale + translation, so the resampling is separable: rows first, then columns, in numpy (single-threaded,
    cheap in DataLoader workers). Only the source window the crop needs is converted to float.
    """
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if abs(M[0, 1]) > 1e-12 or abs(M[1, 0]) > 1e-12:
        raise ValueError("M must be a scale + translation (no rotation or shear)")
    squeeze = image.ndim == 2
    if squeeze:
        image = image[..., None]
    H, W, C = image.shape
    centres = np.arange(size, dtype=np.float64)
    u = (centres - M[0, 2]) / M[0, 0]  # crop pixel centre -> source pixel coordinate
    v = (centres - M[1, 2]) / M[1, 1]
    # source window (clipped to the image, plus a one-pixel zero border for out-of-image taps)
    x0 = int(np.clip(np.floor(u.min()) - 1, 0, W))
    x1 = int(np.clip(np.ceil(u.max()) + 2, 0, W))
    y0 = int(np.clip(np.floor(v.min()) - 1, 0, H))
    y1 = int(np.clip(np.ceil(v.max()) + 2, 0, H))
    window = np.zeros((y1 - y0 + 2, x1 - x0 + 2, C), dtype=np.float32)
    window[1:-1, 1:-1] = image[y0:y1, x0:x1]
    rows, wr = _taps(v - y0, y1 - y0, mode)
    cols, wc = _taps(u - x0, x1 - x0, mode)
    tmp = sum(window[r] * w.astype(np.float32)[:, None, None] for r, w in zip(rows, wr))
    out = sum(tmp[:, c] * w.astype(np.float32)[None, :, None] for c, w in zip(cols, wc))
    out = np.ascontiguousarray(out, dtype=np.float32)
    return out[..., 0] if squeeze else out
