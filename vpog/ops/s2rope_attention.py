"""S2RoPE attention: softmax(rot(q) rot(k)^T / sqrt(D)) v with rotary embeddings over (y, x, s1, s2).

Math (docs/conventions.md §5). Head dim D is split into contiguous groups [y | x | s1 | s2] of 2 n_g channels.
Inside group g, channels k and k + n_g form a pair rotated by the angle pos_g * w_k:

    out[k]       = x[k] cos(a) - x[k + n_g] sin(a)
    out[k + n_g] = x[k + n_g] cos(a) + x[k] sin(a),      a = pos_g * w_k

with w_k = base_xy^(-k / n_g) for y and x, and w_k = f0_s * base_s^(-k / n_g) for s1 and s2.
Angles, cos and sin are computed in float32 (float64 for float64 inputs) whatever the dtype.
Rotations act on q and k only, so the logit q_i . k_j depends on positions through pos_j - pos_i.

Backends (all compute the same function; see docs/s2rope_attention.md):
- "reference": rotate q and k in PyTorch, then `scaled_dot_product_attention`. Reads q, k twice
  and writes float32 temporaries and rotated copies.
- "triton": the fused flash-attention kernel (kernels/s2rope_attention.py): rotation applied to the
  Q and K tiles in-kernel, forward and backward. Head dims 32, 64, 128; float16/bfloat16/float32.
- "triton_rope_sdpa": a Triton pre-pass (kernels/s2rope_rotate.py) rotates q and k in one launch,
  then PyTorch SDPA runs (cuDNN first, else flash / memory-efficient / math). Any even head dim.
- "auto": one fixed rule. CUDA: "triton_rope_sdpa" (the reference for float64, which it does not
  take; logged once); CPU: the reference. The fused kernel runs only when asked for by name until
  GPU measurements show it faster (docs/s2rope_attention.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vpog._backend import register_op, select_backend, warn_once

DEFAULT_N = (10, 10, 6, 6)

register_op("s2rope_attention", backends=("reference", "triton", "triton_rope_sdpa"),
            auto={"cuda": ("triton_rope_sdpa",)})


def s2rope_frequencies(
    n: Sequence[int],
    base_xy: float = 100.0,
    f0_s: float = 4.0,
    base_s: float = 32.0,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Frequencies of every rotated pair, in channel-pair order [y | x | s1 | s2]. -> [sum(n)]."""
    parts = []
    for g, n_g in enumerate(n):
        if n_g == 0:
            continue
        k = torch.arange(n_g, device=device, dtype=torch.float64)
        if g < 2:
            w = base_xy ** (-k / n_g)
        else:
            w = f0_s * base_s ** (-k / n_g)
        parts.append(w)
    if not parts:
        return torch.zeros(0, device=device, dtype=dtype)
    return torch.cat(parts).to(dtype)


def s2rope_angles(pos: torch.Tensor, n: Sequence[int], base_xy=100.0, f0_s=4.0, base_s=32.0) -> torch.Tensor:
    """Angle of every rotated pair. pos [B, N, 4] -> [B, N, sum(n)] (float32, or float64 for float64 pos)."""
    dtype = torch.float64 if pos.dtype == torch.float64 else torch.float32
    freqs = s2rope_frequencies(n, base_xy, f0_s, base_s, device=pos.device, dtype=dtype)
    group_of_pair = torch.repeat_interleave(
        torch.arange(4, device=pos.device), torch.tensor(list(n), device=pos.device)
    )
    return pos.to(dtype)[..., group_of_pair] * freqs


def apply_s2rope(x: torch.Tensor, pos: torch.Tensor, n: Sequence[int] = DEFAULT_N, base_xy=100.0,
                 f0_s=4.0, base_s=32.0) -> torch.Tensor:
    """Rotate x [B, H, N, D] by S2RoPE at positions pos [B, N, 4]. Returns x's dtype.

    Computed in float32 (float64 for float64 inputs) and cast back once.
    """
    n = tuple(int(v) for v in n)
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    ang = s2rope_angles(pos, n, base_xy, f0_s, base_s).to(compute)[:, None]  # [B, 1, N, P]
    cos, sin = ang.cos(), ang.sin()
    xf = x.to(compute)
    out = []
    start, pair = 0, 0
    for n_g in n:
        if n_g == 0:
            continue
        x1 = xf[..., start:start + n_g]
        x2 = xf[..., start + n_g:start + 2 * n_g]
        c = cos[..., pair:pair + n_g]
        s = sin[..., pair:pair + n_g]
        out += [x1 * c - x2 * s, x2 * c + x1 * s]
        start += 2 * n_g
        pair += n_g
    return torch.cat(out, dim=-1).to(x.dtype)


def _check_inputs(q, k, v, pos, n) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, H, N, D], got {tuple(t.shape)}")
    if q.shape != k.shape or q.shape != v.shape:
        raise ValueError(
            f"q, k, v must have the same shape [B, H, N, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise ValueError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device == pos.device):
        raise ValueError(
            f"q, k, v and pos must be on one device, got {q.device}, {k.device}, {v.device}, {pos.device}"
        )
    B, _, N, D = q.shape
    if pos.shape != (B, N, 4):
        raise ValueError(f"pos must have shape [B, N, 4] = [{B}, {N}, 4], got {tuple(pos.shape)}")
    if not pos.dtype.is_floating_point:
        raise ValueError(f"pos must be floating point (float32), got {pos.dtype}")
    if len(n) != 4 or any(int(v) < 0 for v in n):
        raise ValueError(f"n must be 4 non-negative pair counts (n_y, n_x, n_s1, n_s2), got {tuple(n)}")
    if 2 * sum(int(v) for v in n) != D:
        raise ValueError(f"2 * sum(n) must equal the head dim D = {D}, got n = {tuple(n)} (2 * sum = {2 * sum(n)})")


def s2rope_attention_reference(q, k, v, pos, n=DEFAULT_N, base_xy=100.0, f0_s=4.0, base_s=32.0):
    """PyTorch reference of `s2rope_attention` (non-causal, scale 1/sqrt(D))."""
    qr = apply_s2rope(q, pos, n, base_xy, f0_s, base_s)
    kr = apply_s2rope(k, pos, n, base_xy, f0_s, base_s)
    return F.scaled_dot_product_attention(qr, kr, v)


# --------------------------------------------------------------------------------------------
# Fast backends: the kernels' pair tables, then the dispatcher

_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def s2rope_pair_tables(n: Sequence[int], base_xy=100.0, f0_s=4.0, base_s=32.0, device=None):
    """Channel pairs and frequencies for the Triton kernels, cached per device.

    Returns pair_idx int32 [2, D/2] (the channels k and k + n_g of every pair, pair order
    [y | x | s1 | s2]) and pair_freq float32 [4, D/2] (pair_freq[g, p] = w_p if pair p is in group g,
    else 0), so that the kernels' angle sum_g pos_g pair_freq[g, p] equals `s2rope_angles`.
    """
    n = tuple(int(v) for v in n)
    device = torch.device(device if device is not None else "cpu")
    key = (n, float(base_xy), float(f0_s), float(base_s), device)
    if key not in _TABLES:
        half = sum(n)
        idx = torch.zeros(2, half, dtype=torch.int32)
        freq = torch.zeros(4, half, dtype=torch.float32)
        w = s2rope_frequencies(n, base_xy, f0_s, base_s)
        start, pair = 0, 0
        for g, n_g in enumerate(n):
            idx[0, pair:pair + n_g] = torch.arange(start, start + n_g, dtype=torch.int32)
            idx[1, pair:pair + n_g] = torch.arange(start + n_g, start + 2 * n_g, dtype=torch.int32)
            freq[g, pair:pair + n_g] = w[pair:pair + n_g]
            start += 2 * n_g
            pair += n_g
        _TABLES[key] = (idx.to(device), freq.to(device))
    return _TABLES[key]


def _unsupported_reason(backend: str, q: torch.Tensor) -> str | None:
    """None when the fast `backend` takes q's dtype and head dim, else what it does not take.

    Imports the backend's kernels, so only for a backend `select_backend` found runnable.
    """
    if backend == "triton":
        from vpog.kernels.s2rope_attention import unsupported_reason
    else:
        from vpog.kernels.s2rope_rotate import unsupported_reason
    return unsupported_reason(q)


def _cudnn_first(device: torch.device):
    """Make SDPA try cuDNN first, then flash, memory-efficient and math; a no-op off CUDA."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6: no priority order, the listed backends are allowed in torch's order
        return sdpa_kernel(order)


def _run_fast(backend, q, k, v, pos, n, base_xy, f0_s, base_s):
    pos32 = pos if pos.dtype == torch.float32 else pos.float()
    pair_idx, pair_freq = s2rope_pair_tables(n, base_xy, f0_s, base_s, q.device)
    if backend == "triton":
        from vpog.kernels.s2rope_attention import s2rope_attention_fused

        return s2rope_attention_fused(q, k, v, pos32, pair_idx, pair_freq)
    from vpog.kernels.s2rope_rotate import S2RopeRotateFunction

    qr, kr = S2RopeRotateFunction.apply(q, k, pos32, pair_idx, pair_freq)
    with _cudnn_first(q.device):
        return F.scaled_dot_product_attention(qr, kr, v)


def s2rope_attention(q, k, v, pos, n=DEFAULT_N, base_xy=100.0, f0_s=4.0, base_s=32.0, backend="auto"):
    """Attention with S2RoPE applied to q and k (non-causal, scale 1/sqrt(D)).

    q, k, v: [B, H, N, D] float16 / bfloat16 / float32 / float64, one device, any strides.
    pos: [B, N, 4] token positions (y, x, s1, s2), float32 (other float dtypes are cast); zeros
    leave a token unrotated. n: pair counts (n_y, n_x, n_s1, n_s2) with 2 sum(n) = D.
    backend: "auto" | "reference" | "triton" (fused kernel) | "triton_rope_sdpa" (Triton rotation
    pre-pass + SDPA, cuDNN first). A backend given by name raises ValueError for a dtype or head dim
    it does not take; "auto" (and a process-wide default from `set_default_backend`) falls back to
    the reference for those, logged once.
    Returns [B, H, N, D] in q's dtype (contiguous on the Triton backends); differentiable in q, k, v.
    """
    _check_inputs(q, k, v, pos, n)
    n = tuple(int(x) for x in n)
    choice = select_backend("s2rope_attention", backend, q.device)
    if choice != "reference" and q.numel() > 0:
        reason = _unsupported_reason(choice, q)
        if reason is None:
            return _run_fast(choice, q, k, v, pos, n, base_xy, f0_s, base_s)
        if backend != "auto":
            raise ValueError(f"vpog.ops.s2rope_attention: backend '{choice}' does not take {reason}")
        warn_once(f"vpog.ops.s2rope_attention: using the reference path ('{choice}' does not take {reason})")
    return s2rope_attention_reference(q, k, v, pos, n, base_xy, f0_s, base_s)
