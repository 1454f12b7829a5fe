"""S2RoPE attention: softmax(rot(q) rot(k)^T / sqrt(D)) v with rotary embeddings over (y, x, s1, s2).

Math (SPEC §5). Head dim D is split into contiguous groups [y | x | s1 | s2] of 2 n_g channels.
Inside group g, channels k and k + n_g form a pair rotated by the angle pos_g * w_k:

    out[k]       = x[k] cos(a) - x[k + n_g] sin(a)
    out[k + n_g] = x[k + n_g] cos(a) + x[k] sin(a),      a = pos_g * w_k

with w_k = base_xy^(-k / n_g) for y and x, and w_k = f0_s * base_s^(-k / n_g) for s1 and s2.
Angles, cos and sin are computed in float32 (float64 for float64 inputs) whatever the dtype.
Rotations act on q and k only, so the logit q_i . k_j depends on positions through pos_j - pos_i.

Reference path: rotate q and k in PyTorch, then `scaled_dot_product_attention`. Reads q, k twice
and writes rotated copies, which is what the fused Triton kernel avoids.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from vpog._backend import register_op, select_backend

DEFAULT_N = (10, 10, 6, 6)

_SPEC = register_op(
    "s2rope_attention",
    backends=("reference",),
    auto={"cuda": (), "cpu": ()},
    notes="reference: PyTorch rotation + SDPA",
)


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


def s2rope_attention(q, k, v, pos, n=DEFAULT_N, base_xy=100.0, f0_s=4.0, base_s=32.0, backend="auto"):
    """Attention with S2RoPE applied to q and k.

    q, k, v: [B, H, N, D] float16 / bfloat16 / float32 / float64, one device.
    pos: [B, N, 4] float32 token positions (y, x, s1, s2); zeros leave a token unrotated.
    Returns [B, H, N, D] in q's dtype; differentiable in q, k, v.
    """
    _check_inputs(q, k, v, pos, n)
    choice = select_backend("s2rope_attention", backend, q.device)
    if choice == "reference":
        return s2rope_attention_reference(q, k, v, pos, n, base_xy, f0_s, base_s)
    raise AssertionError(f"unhandled backend {choice}")  # every registered backend is handled above
