"""Fused S2RoPE flash attention (Triton): forward and non-causal backward.

    O = softmax(rot(Q) rot(K)^T / sqrt(D)) V,      rot = S2RoPE at each token's (y, x, s1, s2)   (docs/conventions.md §5)

The rotation is applied to Q and K tiles inside the attention kernel, so no rotated copy of q or k
ever reaches device memory (the reference path writes and re-reads both). Rotations are expressed
per channel pair: `PAIR_IDX[0, p]` and `PAIR_IDX[1, p]` are the two channels of pair p (k and k + n_g
of its group, rotate-half layout) and `PAIR_FREQ[g, p]` is its frequency if p belongs to group g,
else 0. A tile x [rows, D] is loaded as its two halves xa = x[:, PAIR_IDX[0]], xb = x[:, PAIR_IDX[1]]
[rows, D/2]; with a = pos . PAIR_FREQ[:, p] (float32, one rounding, equal to the reference's pos_g w_k):

    rot(x)a = xa cos a - xb sin a,       rot(x)b = xb cos a + xa sin a

and q . k = qa . ka + qb . kb, so S = rot(Q)a rot(K)a^T + rot(Q)b rot(K)b^T (two half-depth dots).
cos and sin are computed once per pair (D/2 per token, not D). Gradients come back through the
transposed rotation: grad_xa = ga cos a + gb sin a, grad_xb = gb cos a - ga sin a.

Forward (FlashAttention-2): one program per (query block, batch x head); online softmax in base 2
with float32 statistics and accumulator; the log-sum-exp (base 2, scaled logits) is kept for the
backward. Backward: `delta = rowsum(O * dO)`, then one kernel for dK, dV (a program per key block
looping over every query block) and one for dQ (a program per query block looping over every key
block); no atomics, no causal shortcuts. Any N: each loop runs its full blocks unmasked, then one
masked tail block (padded keys get logit -inf, padded queries probability 0).

Memory per call: reads q, k, v once per query block pass (L2-resident across the programs of one
head); writes o [B, H, N, D] and lse [B * H, N] float32. Backward reads q, k, v, o, dO, writes dq, dk,
dv. Inputs may have any strides; outputs are contiguous.

References: Dao, "FlashAttention-2" (2023); triton-lang/triton python/tutorials/06-fused-attention.py
(structure; its boundary-free, causal-only backward is not followed here).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from vpog.kernels.launch import Launch, run, triton_interpreter

LOG2E = 1.4426950408889634
HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def n_bucket(n: int) -> int:
    """Autotuning key for a sequence length: the next power of two (B never enters a key)."""
    return triton.next_power_of_2(max(int(n), 16))


# Candidate (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel and head-dim class (D <= 64, D = 128),
# chosen from sm_90 compiles (triton 3.9, ptxas 13.4; scripts/triton_sm90_report.py): fp16 / bf16
# configs use wgmma (mma.sync for some 32-row tiles) and keep within 255 registers without spilling.
# Autotuning picks among them per key; the first of each list is the default when
# VPOG_TRITON_AUTOTUNE=0 (tests: one compile per shape).
_FWD_CONFIGS = {
    64: [(128, 64, 8, 2), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 3), (128, 128, 8, 2),
         (64, 128, 8, 2)],
    128: [(128, 64, 8, 2), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 2), (128, 32, 8, 2), (64, 64, 8, 3),
          (128, 128, 8, 2)],
}
_DKDV_CONFIGS = {  # BLOCK_N: keys owned by a program; BLOCK_M: query step
    64: [(32, 128, 8, 2), (32, 64, 4, 2), (32, 64, 4, 3), (64, 64, 4, 2), (64, 128, 8, 2), (64, 128, 8, 3)],
    128: [(32, 64, 8, 2), (32, 64, 8, 3), (32, 32, 4, 2)],
}
_DQ_CONFIGS = {  # BLOCK_M: queries owned by a program; BLOCK_N: key step
    64: [(128, 64, 8, 2), (128, 64, 8, 3), (64, 32, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (128, 128, 8, 2)],
    128: [(64, 32, 8, 2), (64, 64, 8, 2), (32, 64, 4, 2)],
}
# float32 (IEEE dots on the FMA units: operands and accumulators live in registers) has its own lists:
# the fp16 / bf16 tiles spill there (up to 4-5 KB per thread at D = 128); these compile without spills
# for D = 32 and 64 (first class) or D = 128.
_FWD_CONFIGS_FP32 = {64: [(64, 32, 8, 2), (64, 16, 4, 2), (32, 32, 4, 1)],
                     128: [(32, 32, 8, 1), (32, 16, 8, 2), (16, 32, 8, 1)]}
_DKDV_CONFIGS_FP32 = {64: [(32, 32, 8, 1), (16, 32, 8, 2), (32, 16, 8, 2)], 128: [(16, 16, 8, 2)]}
_DQ_CONFIGS_FP32 = {64: [(32, 32, 8, 2)], 128: [(32, 16, 8, 2), (16, 32, 8, 1)]}
# Interpreter: one config, unequal blocks, so tails and several blocks are exercised at tiny N.
_INTERPRETER_CONFIG = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


def _configs(table, table_fp32, kind):
    if triton_interpreter():
        bm, bn = _INTERPRETER_CONFIG[kind]
        return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=4, num_stages=1)]
    tuples = sorted({c for t in (table, table_fp32) for cs in t.values() for c in cs})
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in tuples]


def _pruner(table, table_fp32):
    """Keep the configs listed for the call's precision and head-dim class (and tile-size limits below)."""

    def prune(configs, named_args, **kwargs):
        if triton_interpreter():
            return configs
        args = {**named_args, **kwargs}  # triton versions differ in which of the two hold constexprs
        if "HEAD_DIM" not in args or "N_BUCKET" not in args:
            return configs
        ieee = args.get("DOT_PREC") == "ieee"
        order = (table_fp32 if ieee else table)[64 if args["HEAD_DIM"] <= 64 else 128]
        allowed = set(order)
        # short sequences: no 128 x 128 tiles
        max_tile = 128 * 64 if args["N_BUCKET"] <= 256 else 128 * 128
        kept = [
            c for c in configs
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in allowed
            and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= max_tile
        ]
        if os.environ.get("VPOG_TRITON_AUTOTUNE", "1") == "0":  # the listed default that fits, no tuning
            kept.sort(key=lambda c: order.index((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps,
                                                  c.num_stages)))
            return kept[:1] or configs[:1]
        return kept or configs[:1]

    return prune


# ------------------------------------------------------------------------------------------------
# Shared pieces


@triton.jit
def _program_rows(N, H, BLOCK: tl.constexpr):
    """This program's rows: programs walk the BLOCK-row blocks of every (image, head).

    -> bh = b H + h, b and h (int64, for the pointer offsets), offs [BLOCK] row indices, ok = offs < N.
    """
    pid = tl.program_id(0)
    num = tl.cdiv(N, BLOCK)
    bh = pid // num
    offs = (pid % num) * BLOCK + tl.arange(0, BLOCK)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64), offs, offs < N


@triton.jit
def _logits(xa, xb, ya, yb, DOT_PREC: tl.constexpr):
    """x y^T from the halves of the rotated rows: xa ya^T + xb yb^T (float32 accumulation)."""
    s = tl.dot(xa, tl.trans(ya), input_precision=DOT_PREC)
    return tl.dot(xb, tl.trans(yb), s, input_precision=DOT_PREC)


@triton.jit
def _sincos(ang, FAST: tl.constexpr):
    """cos, sin of float32 angles. FAST: reduce to [-pi, pi] (Cody-Waite), then the SFU approximations."""
    if FAST:
        t = tl.floor(ang * 0.15915494309189535 + 0.5)
        r = tl.fma(-t, 6.2831854820251465, ang)
        r = tl.fma(-t, -1.7484555314695172e-07, r)
        c = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)
        s = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [r], dtype=tl.float32, is_pure=True, pack=1)
    else:
        c = tl.cos(ang)
        s = tl.sin(ang)
    return c, s


@triton.jit
def _tile_cos_sin(POS, spn, spc, offs, mask, f_y, f_x, f_s1, f_s2, MASK: tl.constexpr, FAST: tl.constexpr):
    """cos, sin [rows, D/2] float32 of the pair angles of rows `offs` (POS already offset to the image)."""
    prow = POS + offs * spn
    if MASK:
        p0 = tl.load(prow, mask=mask, other=0.0).to(tl.float32)
        p1 = tl.load(prow + spc, mask=mask, other=0.0).to(tl.float32)
        p2 = tl.load(prow + 2 * spc, mask=mask, other=0.0).to(tl.float32)
        p3 = tl.load(prow + 3 * spc, mask=mask, other=0.0).to(tl.float32)
    else:
        p0 = tl.load(prow).to(tl.float32)
        p1 = tl.load(prow + spc).to(tl.float32)
        p2 = tl.load(prow + 2 * spc).to(tl.float32)
        p3 = tl.load(prow + 3 * spc).to(tl.float32)
    # exactly one frequency of each pair is non-zero, so this is the single rounding pos_g * w_k
    ang = p0[:, None] * f_y[None, :] + p1[:, None] * f_x[None, :]
    ang = ang + p2[:, None] * f_s1[None, :] + p3[:, None] * f_s2[None, :]
    return _sincos(ang, FAST)


@triton.jit
def _rot_tile(X, sxn, sxd, POS, spn, spc, offs, mask, idx_a, idx_b, f_y, f_x, f_s1, f_s2,
              MASK: tl.constexpr, FAST: tl.constexpr):
    """Load rows `offs` of one head as halves and rotate them. -> rot(x)a, rot(x)b [rows, D/2] in x's dtype."""
    rows = X + offs[:, None] * sxn
    if MASK:
        xa = tl.load(rows + idx_a[None, :] * sxd, mask=mask[:, None], other=0.0)
        xb = tl.load(rows + idx_b[None, :] * sxd, mask=mask[:, None], other=0.0)
    else:
        xa = tl.load(rows + idx_a[None, :] * sxd)
        xb = tl.load(rows + idx_b[None, :] * sxd)
    c, s = _tile_cos_sin(POS, spn, spc, offs, mask, f_y, f_x, f_s1, f_s2, MASK, FAST)
    xa32 = xa.to(tl.float32)
    xb32 = xb.to(tl.float32)
    return (xa32 * c - xb32 * s).to(xa.dtype), (xb32 * c + xa32 * s).to(xa.dtype)


@triton.jit
def _store_unrotated(X, sxn, sxd, POS, spn, spc, offs, mask, idx_a, idx_b, f_y, f_x, f_s1, f_s2, ga, gb,
                     FAST: tl.constexpr):
    """Store R^T [ga | gb] (the gradient w.r.t. the unrotated rows) into X's channels idx_a, idx_b."""
    c, s = _tile_cos_sin(POS, spn, spc, offs, mask, f_y, f_x, f_s1, f_s2, True, FAST)
    rows = X + offs[:, None] * sxn
    tl.store(rows + idx_a[None, :] * sxd, (ga * c + gb * s).to(X.dtype.element_ty), mask=mask[:, None])
    tl.store(rows + idx_b[None, :] * sxd, (gb * c - ga * s).to(X.dtype.element_ty), mask=mask[:, None])


@triton.jit
def _load_rows(X, sxn, sxd, offs, mask, offs_d, MASK: tl.constexpr):
    ptrs = X + offs[:, None] * sxn + offs_d[None, :] * sxd
    if MASK:
        return tl.load(ptrs, mask=mask[:, None], other=0.0)
    return tl.load(ptrs)


@triton.jit
def _pair_tables(PAIR_IDX, PAIR_FREQ, HALF: tl.constexpr):
    offs_p = tl.arange(0, HALF)
    idx_a = tl.load(PAIR_IDX + offs_p)
    idx_b = tl.load(PAIR_IDX + HALF + offs_p)
    f_y = tl.load(PAIR_FREQ + offs_p)
    f_x = tl.load(PAIR_FREQ + HALF + offs_p)
    f_s1 = tl.load(PAIR_FREQ + 2 * HALF + offs_p)
    f_s2 = tl.load(PAIR_FREQ + 3 * HALF + offs_p)
    return idx_a, idx_b, f_y, f_x, f_s1, f_s2


# ------------------------------------------------------------------------------------------------
# Forward


@triton.jit
def _fwd_inner(acc, l_i, m_i, qa, qb, K, skn, skd, V, svn, svd, POS, spn, spc,
               idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, lo, hi, N, qk_scale,
               BLOCK_N: tl.constexpr, MASK: tl.constexpr, FAST: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        ka, kb = _rot_tile(K, skn, skd, POS, spn, spc, offs_n, n_ok, idx_a, idx_b,
                           f_y, f_x, f_s1, f_s2, MASK, FAST)
        s = _logits(qa, qb, ka, kb, DOT_PREC)
        if MASK:
            s = tl.where(n_ok[None, :], s, float("-inf"))
        m_ij = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(V, svn, svd, offs_n, n_ok, offs_d, MASK)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PREC)
        m_i = m_ij
    return acc, l_i, m_i


@triton.autotune(
    configs=_configs(_FWD_CONFIGS, _FWD_CONFIGS_FP32, "fwd"),
    key=["N_BUCKET", "HEAD_DIM"],
    prune_configs_by={"early_config_prune": _pruner(_FWD_CONFIGS, _FWD_CONFIGS_FP32)},
)
@triton.jit
def _s2rope_attention_fwd_kernel(
    Q, K, V, O, LSE, POS, PAIR_IDX, PAIR_FREQ,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, spb, spn, spc,
    H, N, N_BUCKET, qk_scale,
    HEAD_DIM: tl.constexpr, FAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    HALF: tl.constexpr = HEAD_DIM // 2
    bh, b, h, offs_m, m_ok = _program_rows(N, H, BLOCK_M)
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    O += b * sob + h * soh
    POS += b * spb
    idx_a, idx_b, f_y, f_x, f_s1, f_s2 = _pair_tables(PAIR_IDX, PAIR_FREQ, HALF)
    offs_d = tl.arange(0, HEAD_DIM)
    qa, qb = _rot_tile(Q, sqn, sqd, POS, spn, spc, offs_m, m_ok, idx_a, idx_b, f_y, f_x, f_s1, f_s2, True, FAST)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, qa, qb, K, skn, skd, V, svn, svd, POS, spn, spc,
                               idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, 0, n_full, N, qk_scale,
                               BLOCK_N, False, FAST, DOT_PREC)
    if n_full < N:
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, qa, qb, K, skn, skd, V, svn, svd, POS, spn, spc,
                                   idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, n_full, N, N, qk_scale,
                                   BLOCK_N, True, FAST, DOT_PREC)
    acc = acc / l_i[:, None]
    tl.store(LSE + bh.to(tl.int64) * N + offs_m, m_i + tl.math.log2(l_i), mask=m_ok)
    tl.store(O + offs_m[:, None] * son + offs_d[None, :] * sod, acc.to(O.dtype.element_ty), mask=m_ok[:, None])


# ------------------------------------------------------------------------------------------------
# Backward


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, sob, soh, son, sod, sdb, sdh, sdn, sdd, H, N,
                      HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """delta[bh, i] = sum_d O[i, d] dO[i, d] (float32)."""
    bh, b, h, offs, ok = _program_rows(N, H, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    o = _load_rows(O + b * sob + h * soh, son, sod, offs, ok, offs_d, True).to(tl.float32)
    do = _load_rows(DO + b * sdb + h * sdh, sdn, sdd, offs, ok, offs_d, True).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * N + offs, tl.sum(o * do, 1), mask=ok)


@triton.jit
def _dkdv_inner(dv, dka, dkb, ka, kb, v, Q, sqn, sqd, DO, sdn, sdd, LSE, DELTA, POS, spn, spc,
                idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, lo, hi, N, qk_scale,
                BLOCK_M: tl.constexpr, MASK: tl.constexpr, FAST: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < N
        qa, qb = _rot_tile(Q, sqn, sqd, POS, spn, spc, offs_m, m_ok, idx_a, idx_b,
                           f_y, f_x, f_s1, f_s2, MASK, FAST)
        do = _load_rows(DO, sdn, sdd, offs_m, m_ok, offs_d, MASK)
        if MASK:
            lse = tl.load(LSE + offs_m, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + offs_m, mask=m_ok, other=0.0)
        else:
            lse = tl.load(LSE + offs_m)
            delta = tl.load(DELTA + offs_m)
        s_t = _logits(ka, kb, qa, qb, DOT_PREC)  # [BLOCK_N, BLOCK_M]
        p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
        if MASK:
            p_t = tl.where(m_ok[None, :], p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        ds_t = (p_t * (dp_t - delta[None, :])).to(qa.dtype)
        dka = tl.dot(ds_t, qa, dka, input_precision=DOT_PREC)
        dkb = tl.dot(ds_t, qb, dkb, input_precision=DOT_PREC)
    return dv, dka, dkb


@triton.autotune(
    configs=_configs(_DKDV_CONFIGS, _DKDV_CONFIGS_FP32, "dkdv"),
    key=["N_BUCKET", "HEAD_DIM"],
    prune_configs_by={"early_config_prune": _pruner(_DKDV_CONFIGS, _DKDV_CONFIGS_FP32)},
)
@triton.jit
def _s2rope_attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, POS, PAIR_IDX, PAIR_FREQ,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
    sgb, sgh, sgn, sgd, spb, spn, spc,
    H, N, N_BUCKET, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, FAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One key block: dV = P^T dO, dK = R^T (scale dS^T rot(Q)) over every query block. DK, DV share strides sg*."""
    HALF: tl.constexpr = HEAD_DIM // 2
    bh, b, h, offs_n, n_ok = _program_rows(N, H, BLOCK_N)
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    DO += b * sdb + h * sdh
    DK += b * sgb + h * sgh
    DV += b * sgb + h * sgh
    POS += b * spb
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N
    idx_a, idx_b, f_y, f_x, f_s1, f_s2 = _pair_tables(PAIR_IDX, PAIR_FREQ, HALF)
    offs_d = tl.arange(0, HEAD_DIM)
    ka, kb = _rot_tile(K, skn, skd, POS, spn, spc, offs_n, n_ok, idx_a, idx_b, f_y, f_x, f_s1, f_s2, True, FAST)
    v = _load_rows(V, svn, svd, offs_n, n_ok, offs_d, True)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dka = tl.zeros([BLOCK_N, HALF], dtype=tl.float32)
    dkb = tl.zeros([BLOCK_N, HALF], dtype=tl.float32)
    m_full = (N // BLOCK_M) * BLOCK_M
    dv, dka, dkb = _dkdv_inner(dv, dka, dkb, ka, kb, v, Q, sqn, sqd, DO, sdn, sdd, LSE, DELTA, POS, spn, spc,
                               idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, 0, m_full, N, qk_scale,
                               BLOCK_M, False, FAST, DOT_PREC)
    if m_full < N:
        dv, dka, dkb = _dkdv_inner(dv, dka, dkb, ka, kb, v, Q, sqn, sqd, DO, sdn, sdd, LSE, DELTA, POS, spn, spc,
                                   idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, m_full, N, N, qk_scale,
                                   BLOCK_M, True, FAST, DOT_PREC)
    _store_unrotated(DK, sgn, sgd, POS, spn, spc, offs_n, n_ok, idx_a, idx_b, f_y, f_x, f_s1, f_s2,
                     dka * sm_scale, dkb * sm_scale, FAST)
    tl.store(DV + offs_n[:, None] * sgn + offs_d[None, :] * sgd, dv.to(DV.dtype.element_ty), mask=n_ok[:, None])


@triton.jit
def _dq_inner(dqa, dqb, qa, qb, do, lse, delta, K, skn, skd, V, svn, svd, POS, spn, spc,
              idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, lo, hi, N, qk_scale,
              BLOCK_N: tl.constexpr, MASK: tl.constexpr, FAST: tl.constexpr, DOT_PREC: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        ka, kb = _rot_tile(K, skn, skd, POS, spn, spc, offs_n, n_ok, idx_a, idx_b,
                           f_y, f_x, f_s1, f_s2, MASK, FAST)
        v = _load_rows(V, svn, svd, offs_n, n_ok, offs_d, MASK)
        s = _logits(qa, qb, ka, kb, DOT_PREC)
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        if MASK:
            p = tl.where(n_ok[None, :], p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = (p * (dp - delta[:, None])).to(ka.dtype)
        dqa = tl.dot(ds, ka, dqa, input_precision=DOT_PREC)
        dqb = tl.dot(ds, kb, dqb, input_precision=DOT_PREC)
    return dqa, dqb


@triton.autotune(
    configs=_configs(_DQ_CONFIGS, _DQ_CONFIGS_FP32, "dq"),
    key=["N_BUCKET", "HEAD_DIM"],
    prune_configs_by={"early_config_prune": _pruner(_DQ_CONFIGS, _DQ_CONFIGS_FP32)},
)
@triton.jit
def _s2rope_attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, POS, PAIR_IDX, PAIR_FREQ,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sdb, sdh, sdn, sdd,
    sgb, sgh, sgn, sgd, spb, spn, spc,
    H, N, N_BUCKET, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, FAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One query block: dQ = R^T (scale dS rot(K)) over every key block."""
    HALF: tl.constexpr = HEAD_DIM // 2
    bh, b, h, offs_m, m_ok = _program_rows(N, H, BLOCK_M)
    Q += b * sqb + h * sqh
    K += b * skb + h * skh
    V += b * svb + h * svh
    DO += b * sdb + h * sdh
    DQ += b * sgb + h * sgh
    POS += b * spb
    idx_a, idx_b, f_y, f_x, f_s1, f_s2 = _pair_tables(PAIR_IDX, PAIR_FREQ, HALF)
    offs_d = tl.arange(0, HEAD_DIM)
    qa, qb = _rot_tile(Q, sqn, sqd, POS, spn, spc, offs_m, m_ok, idx_a, idx_b, f_y, f_x, f_s1, f_s2, True, FAST)
    do = _load_rows(DO, sdn, sdd, offs_m, m_ok, offs_d, True)
    lse = tl.load(LSE + bh.to(tl.int64) * N + offs_m, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * N + offs_m, mask=m_ok, other=0.0)
    dqa = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    dqb = tl.zeros([BLOCK_M, HALF], dtype=tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    dqa, dqb = _dq_inner(dqa, dqb, qa, qb, do, lse, delta, K, skn, skd, V, svn, svd, POS, spn, spc,
                         idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, 0, n_full, N, qk_scale,
                         BLOCK_N, False, FAST, DOT_PREC)
    if n_full < N:
        dqa, dqb = _dq_inner(dqa, dqb, qa, qb, do, lse, delta, K, skn, skd, V, svn, svd, POS, spn, spc,
                             idx_a, idx_b, f_y, f_x, f_s1, f_s2, offs_d, n_full, N, N, qk_scale,
                             BLOCK_N, True, FAST, DOT_PREC)
    _store_unrotated(DQ, sgn, sgd, POS, spn, spc, offs_m, m_ok, idx_a, idx_b, f_y, f_x, f_s1, f_s2,
                     dqa * sm_scale, dqb * sm_scale, FAST)


# ------------------------------------------------------------------------------------------------
# Host launchers


def unsupported_reason(q: torch.Tensor) -> str | None:
    """None when the fused kernel takes q's dtype and head dim here, else what it does not take."""
    if q.dtype not in DTYPES:
        return f"dtype {q.dtype} (the fused kernel takes {', '.join(map(str, DTYPES))})"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim D = {q.shape[-1]} (the fused kernel takes {HEAD_DIMS})"
    if q.dtype == torch.bfloat16 and triton_interpreter():
        return "bfloat16 in the Triton interpreter (its tl.dot multiplies bfloat16 bit patterns, triton#11584)"
    return None


def check_fused_inputs(q: torch.Tensor, pair_idx: torch.Tensor, pair_freq: torch.Tensor) -> None:
    """Raise ValueError for what the fused kernel does not handle (shapes were checked by the op)."""
    reason = unsupported_reason(q)
    if reason is not None:
        raise ValueError(f"the fused Triton kernel does not take {reason}")
    d = q.shape[-1]
    if pair_idx.shape != (2, d // 2) or pair_idx.dtype != torch.int32:
        raise ValueError(f"pair_idx must be int32 [2, {d // 2}], got {pair_idx.dtype} {tuple(pair_idx.shape)}")
    if pair_freq.shape != (4, d // 2) or pair_freq.dtype != torch.float32:
        raise ValueError(f"pair_freq must be float32 [4, {d // 2}], got {pair_freq.dtype} {tuple(pair_freq.shape)}")
    if not (pair_idx.is_contiguous() and pair_freq.is_contiguous()):
        raise ValueError("pair_idx and pair_freq must be contiguous")


def fast_sincos(dtype: torch.dtype) -> bool:
    """Whether the kernels take the range-reduced SFU cos / sin (16-bit inputs on a GPU) or the precise ones."""
    return (not triton_interpreter()) and dtype in (torch.float16, torch.bfloat16)


def _flags(dtype: torch.dtype) -> dict:
    return {"FAST": fast_sincos(dtype), "DOT_PREC": "ieee" if dtype == torch.float32 else "tf32"}


def s2rope_attention_fwd(q, k, v, pos, pair_idx, pair_freq, launch=run):
    """q, k, v [B, H, N, D] (any strides), pos [B, N, 4] float32 -> (o [B, H, N, D] contiguous, lse [B*H, N] f32).

    `launch` receives the kernel launch (`vpog.kernels.launch`; the default runs it).
    """
    B, H, N, D = q.shape
    o = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    lse = torch.empty((B * H, N), device=q.device, dtype=torch.float32)
    sm_scale = D ** -0.5
    launch(Launch(
        _s2rope_attention_fwd_kernel, lambda meta: (triton.cdiv(N, meta["BLOCK_M"]) * B * H,),
        (q, k, v, o, lse, pos, pair_idx, pair_freq, *q.stride(), *k.stride(), *v.stride(), *o.stride(),
         *pos.stride(), H, N, n_bucket(N), sm_scale * LOG2E),
        {"HEAD_DIM": D, **_flags(q.dtype)},
    ))
    return o, lse


def s2rope_attention_bwd(grad_o, q, k, v, o, lse, pos, pair_idx, pair_freq, launch=run):
    """Gradients of `s2rope_attention_fwd`. -> grad_q, grad_k, grad_v [B, H, N, D] contiguous.

    Three launches, in order: delta, dK and dV, dQ (each handed to `launch`).
    """
    B, H, N, D = q.shape
    sm_scale = D ** -0.5
    delta = torch.empty((B * H, N), device=q.device, dtype=torch.float32)
    grad_q = torch.empty((B, H, N, D), device=q.device, dtype=q.dtype)
    grad_k = torch.empty_like(grad_q)
    grad_v = torch.empty_like(grad_q)
    flags = {"HEAD_DIM": D, **_flags(q.dtype)}
    block = 16 if triton_interpreter() else 64
    common = (*q.stride(), *k.stride(), *v.stride(), *grad_o.stride())
    scales = (H, N, n_bucket(N), sm_scale * LOG2E, sm_scale)
    launch(Launch(_bwd_delta_kernel, (triton.cdiv(N, block) * B * H,),
                  (o, grad_o, delta, *o.stride(), *grad_o.stride(), H, N), {"HEAD_DIM": D, "BLOCK": block}))
    launch(Launch(
        _s2rope_attention_bwd_dkdv_kernel, lambda meta: (triton.cdiv(N, meta["BLOCK_N"]) * B * H,),
        (q, k, v, grad_o, lse, delta, grad_k, grad_v, pos, pair_idx, pair_freq,
         *common, *grad_k.stride(), *pos.stride(), *scales),
        flags,
    ))
    launch(Launch(
        _s2rope_attention_bwd_dq_kernel, lambda meta: (triton.cdiv(N, meta["BLOCK_M"]) * B * H,),
        (q, k, v, grad_o, lse, delta, grad_q, pos, pair_idx, pair_freq,
         *common, *grad_q.stride(), *pos.stride(), *scales),
        flags,
    ))
    return grad_q, grad_k, grad_v


class S2RopeAttentionFunction(torch.autograd.Function):
    """Fused S2RoPE attention; differentiable in q, k, v (not in pos or the tables)."""

    @staticmethod
    def forward(ctx, q, k, v, pos, pair_idx, pair_freq):
        o, lse = s2rope_attention_fwd(q, k, v, pos, pair_idx, pair_freq)
        ctx.save_for_backward(q, k, v, o, lse, pos, pair_idx, pair_freq)
        return o

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, o, lse, pos, pair_idx, pair_freq = ctx.saved_tensors
        grad_q, grad_k, grad_v = s2rope_attention_bwd(grad_o, q, k, v, o, lse, pos, pair_idx, pair_freq)
        return grad_q, grad_k, grad_v, None, None, None


def s2rope_attention_fused(q, k, v, pos, pair_idx, pair_freq):
    """Fused S2RoPE attention. q, k, v [B, H, N, D]; pos [B, N, 4] float32; tables from the op module."""
    check_fused_inputs(q, pair_idx, pair_freq)
    return S2RopeAttentionFunction.apply(q, k, v, pos, pair_idx, pair_freq)
