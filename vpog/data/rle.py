"""COCO run-length encoding of binary masks, as BOP-webdataset `mask.json` / `mask_visib.json` store them.

An RLE is `{"counts": ..., "size": [H, W]}` over the mask flattened in column-major (Fortran) order;
runs alternate 0s and 1s and the first run counts leading zeros (it is 0 when the mask starts with 1).
`counts` is a list of ints (uncompressed RLE, what BOP writes) or a string (COCO's compressed form,
LEB128-like 6-bit characters with deltas, decoded here without pycocotools).

References: the COCO mask API (`maskApi.c`: rleEncode, rleFrString), BOP toolkit `pycoco_utils.py`.
"""

from __future__ import annotations

import numpy as np


def mask_to_rle(mask: np.ndarray) -> dict:
    """Binary mask [H, W] (any dtype, nonzero = 1) -> uncompressed COCO RLE {"counts": [...], "size": [H, W]}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [H, W], got {tuple(mask.shape)}")
    h, w = mask.shape
    flat = (mask != 0).reshape(-1, order="F").astype(np.int8)
    if flat.size == 0:
        return {"counts": [], "size": [int(h), int(w)]}
    change = np.flatnonzero(np.diff(flat)) + 1  # positions where the value flips
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"counts": [int(r) for r in runs], "size": [int(h), int(w)]}


def _counts_from_string(s: str) -> list[int]:
    """Decode COCO's compressed counts string (rleFrString)."""
    counts: list[int] = []
    p = 0
    data = s.encode("ascii") if isinstance(s, str) else bytes(s)
    n = len(data)
    while p < n:
        x = 0
        k = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("compressed RLE counts string ends inside a number")
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_to_mask(rle: dict) -> np.ndarray:
    """COCO RLE (list or compressed-string counts) -> bool mask [H, W].

    Raises ValueError for a malformed RLE (bad size, negative runs, runs not summing to H * W).
    """
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError(f"rle must be a dict with 'counts' and 'size', got {type(rle).__name__}")
    size = rle["size"]
    try:
        if len(size) != 2:
            raise ValueError
        h, w = int(size[0]), int(size[1])
    except (TypeError, ValueError):
        raise ValueError(f"rle['size'] must be [H, W] (two integers), got {size!r}") from None
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _counts_from_string(counts)
    try:
        runs = np.asarray(counts, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"rle['counts'] must be a list of run lengths or a compressed string, "
                         f"got {type(counts).__name__}") from None
    if runs.ndim != 1:
        raise ValueError(f"rle['counts'] must be a flat list of run lengths, got shape {runs.shape}")
    if runs.size and runs.min() < 0:
        raise ValueError("rle['counts'] holds a negative run length")
    if int(runs.sum()) != h * w:
        raise ValueError(f"rle['counts'] sums to {int(runs.sum())}, expected H * W = {h * w}")
    values = (np.arange(runs.size) % 2).astype(bool)
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T.copy()


def rle_area(rle: dict) -> int:
    """Number of foreground pixels of an RLE without decoding it."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = _counts_from_string(counts)
    return int(sum(counts[1::2]))
