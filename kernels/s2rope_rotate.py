"""S2RoPE rotation pre-pass (Triton): rotate q and k in one launch, for PyTorch SDPA to consume.

    y = rot(x):      ya = xa cos a - xb sin a,   yb = xb cos a + xa sin a      (docs/conventions.md §5)
    inverse (grad):  xa = ya cos a + yb sin a,   xb = yb cos a - ya sin a

with xa = x[..., PAIR_IDX[0]], xb = x[..., PAIR_IDX[1]] the two channels of every pair and
a = pos . PAIR_FREQ[:, p] computed in float32 (see kernels/s2rope_attention.py for the tables;
16-bit inputs take its fast range-reduced SFU cos / sin, float32 inputs the precise ones).
The inverse rotation is the transpose, so the backward is the same kernel with sin negated.

A program owns a block of tokens of one image and a chunk of heads: cos and sin are computed once
per (token, pair) and reused for every head of the chunk and for both tensors. Memory: reads q, k
once and writes rotated copies once (4 B H N D elements), the least an unfused rotation can move;
the eager reference moves several times that (float32 temporaries, a concatenation).
Inputs may have any strides; outputs are contiguous [B, H, N, D] in the input dtype.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from vpog.kernels.launch import Launch, run, triton_interpreter
from vpog.kernels.s2rope_attention import DTYPES, _sincos, fast_sincos, n_bucket


def _configs():
    if triton_interpreter():
        return [triton.Config({"BLOCK_N": 16, "H_CHUNK": 2}, num_warps=4, num_stages=1)]
    # (BLOCK_N, H_CHUNK, num_warps); the pruner keeps those that fit the registers for the head dim;
    # the first kept is the default when VPOG_TRITON_AUTOTUNE=0
    choices = [(32, 4, 4), (16, 2, 4), (16, 4, 4), (32, 2, 4), (32, 4, 8), (32, 16, 8), (64, 4, 8), (64, 16, 8)]
    return [triton.Config({"BLOCK_N": bn, "H_CHUNK": hc}, num_warps=w, num_stages=1) for bn, hc, w in choices]


# At most this many (token, pair) elements of a tile per thread: each costs cos, sin, both halves of
# x1 and x2 and their addresses in registers. sm_90 compiles (triton 3.9, ptxas 13.4,
# scripts/triton_sm90_report.py): 8 per thread uses about 150 registers without spilling; 16 per
# thread (e.g. D = 128 with 32 tokens on 4 warps) hits 255 registers and spills.
_MAX_TILE_PER_THREAD = 8


def _prune(configs, named_args, **kwargs):
    if triton_interpreter():
        return configs
    half_pad = {**named_args, **kwargs}.get("HALF_PAD")
    if half_pad is not None:
        per_thread = lambda c: c.kwargs["BLOCK_N"] * half_pad / (32 * c.num_warps)
        fitting = [c for c in configs if per_thread(c) <= _MAX_TILE_PER_THREAD]
        configs = fitting or [min(configs, key=per_thread)]
    return configs[:1] if os.environ.get("VPOG_TRITON_AUTOTUNE", "1") == "0" else configs


@triton.jit
def _rot_store(Y, rows, idx_a, idx_b, syd, xa, xb, c, s, mask):
    xa32 = xa.to(tl.float32)
    xb32 = xb.to(tl.float32)
    tl.store(Y + rows + idx_a[None, :] * syd, (xa32 * c - xb32 * s).to(Y.dtype.element_ty), mask=mask)
    tl.store(Y + rows + idx_b[None, :] * syd, (xb32 * c + xa32 * s).to(Y.dtype.element_ty), mask=mask)


@triton.autotune(configs=_configs(), key=["N_BUCKET", "HALF_PAD", "H", "TWO", "INVERSE"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _s2rope_rotate_kernel(
    X1, Y1, X2, Y2, POS, PAIR_IDX, PAIR_FREQ,
    s1b, s1h, s1n, s1d, t1b, t1h, t1n, t1d, s2b, s2h, s2n, s2d, t2b, t2h, t2n, t2d, spb, spn, spc,
    H, N, N_BUCKET, HALF,
    HALF_PAD: tl.constexpr, TWO: tl.constexpr, INVERSE: tl.constexpr, FAST: tl.constexpr,
    BLOCK_N: tl.constexpr, H_CHUNK: tl.constexpr,
):
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    b = (pid // num_n).to(tl.int64)
    offs_n = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    h0 = tl.program_id(1) * H_CHUNK
    h1 = tl.minimum(h0 + H_CHUNK, H)
    n_ok = offs_n < N
    offs_p = tl.arange(0, HALF_PAD)
    p_ok = offs_p < HALF
    idx_a = tl.load(PAIR_IDX + offs_p, mask=p_ok, other=0)
    idx_b = tl.load(PAIR_IDX + HALF + offs_p, mask=p_ok, other=0)
    prow = POS + b * spb + offs_n * spn
    ang = tl.zeros([BLOCK_N, HALF_PAD], dtype=tl.float32)
    for g in tl.static_range(4):  # exactly one frequency of a pair is non-zero: one rounding, pos_g * w_k
        pg = tl.load(prow + g * spc, mask=n_ok, other=0.0).to(tl.float32)
        fg = tl.load(PAIR_FREQ + g * HALF + offs_p, mask=p_ok, other=0.0)
        ang += pg[:, None] * fg[None, :]
    c, s = _sincos(ang, FAST)
    if INVERSE:
        s = -s
    mask = n_ok[:, None] & p_ok[None, :]
    x1_rows = b * s1b + offs_n[:, None] * s1n
    y1_rows = b * t1b + offs_n[:, None] * t1n
    x2_rows = b * s2b + offs_n[:, None] * s2n
    y2_rows = b * t2b + offs_n[:, None] * t2n
    for h in range(h0, h1):
        hh = h + b * 0  # int64, like b: h * stride can pass 2^31 in big batches
        # issue every load of this head before the stores
        xa1 = tl.load(X1 + x1_rows + hh * s1h + idx_a[None, :] * s1d, mask=mask, other=0.0)
        xb1 = tl.load(X1 + x1_rows + hh * s1h + idx_b[None, :] * s1d, mask=mask, other=0.0)
        if TWO:
            xa2 = tl.load(X2 + x2_rows + hh * s2h + idx_a[None, :] * s2d, mask=mask, other=0.0)
            xb2 = tl.load(X2 + x2_rows + hh * s2h + idx_b[None, :] * s2d, mask=mask, other=0.0)
        _rot_store(Y1, y1_rows + hh * t1h, idx_a, idx_b, t1d, xa1, xb1, c, s, mask)
        if TWO:
            _rot_store(Y2, y2_rows + hh * t2h, idx_a, idx_b, t2d, xa2, xb2, c, s, mask)


def unsupported_reason(x: torch.Tensor) -> str | None:
    """None when the rotation pre-pass takes x's dtype and head dim, else what it does not take."""
    if x.dtype not in DTYPES:
        return f"dtype {x.dtype} (the rotation pre-pass takes {', '.join(map(str, DTYPES))})"
    if x.shape[-1] % 2:
        return f"odd head dim D = {x.shape[-1]} (channels rotate in pairs)"
    return None


def s2rope_rotate(x1, x2, pos, pair_idx, pair_freq, inverse=False, launch=run):
    """Rotate x1 (and x2, if not None) [B, H, N, D] by S2RoPE at pos [B, N, 4].

    Returns contiguous tensors in the inputs' dtype: (y1, y2) or (y1, None). `inverse` applies
    the transposed rotation (what the backward needs). Any strides; any even D. `launch` receives
    the kernel launch (`vpog.kernels.launch`; the default runs it).
    """
    B, H, N, D = x1.shape
    reason = unsupported_reason(x1)
    if reason is not None:
        raise ValueError(f"the Triton rotation does not take {reason}")
    if x2 is not None and (x2.shape != x1.shape or x2.dtype != x1.dtype):
        raise ValueError(f"x2 must match x1 {tuple(x1.shape)} {x1.dtype}, got {tuple(x2.shape)} {x2.dtype}")
    half = D // 2
    if pair_idx.shape != (2, half) or pair_freq.shape != (4, half):
        raise ValueError(f"pair tables must be [2, {half}] and [4, {half}], got "
                         f"{tuple(pair_idx.shape)} and {tuple(pair_freq.shape)}")
    y1 = torch.empty((B, H, N, D), device=x1.device, dtype=x1.dtype)
    y2 = torch.empty_like(y1) if x2 is not None else None
    if y1.numel() == 0:
        return y1, y2
    two = x2 is not None
    x2_, y2_ = (x2, y2) if two else (x1, y1)
    launch(Launch(
        _s2rope_rotate_kernel, lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * B, triton.cdiv(H, meta["H_CHUNK"])),
        (x1, y1, x2_, y2_, pos, pair_idx, pair_freq,
         *x1.stride(), *y1.stride(), *x2_.stride(), *y2_.stride(), *pos.stride(), H, N, n_bucket(N), half),
        {"HALF_PAD": triton.next_power_of_2(half), "TWO": two, "INVERSE": bool(inverse),
         "FAST": fast_sincos(x1.dtype)},
    ))
    return y1, y2


class S2RopeRotateFunction(torch.autograd.Function):
    """(q, k) -> (rot(q), rot(k)); differentiable in q and k."""

    @staticmethod
    def forward(ctx, q, k, pos, pair_idx, pair_freq):
        ctx.save_for_backward(pos, pair_idx, pair_freq)
        return s2rope_rotate(q, k, pos, pair_idx, pair_freq)

    @staticmethod
    def backward(ctx, grad_qr, grad_kr):
        pos, pair_idx, pair_freq = ctx.saved_tensors
        grad_q, grad_k = s2rope_rotate(grad_qr, grad_kr, pos, pair_idx, pair_freq, inverse=True)
        return grad_q, grad_k, None, None, None
