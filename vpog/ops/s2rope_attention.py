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
- "auto": the reference on CPU; on CUDA the path `AUTO_TABLE` gives for the (dtype, head dim, N,
  fwd-only or training) key (rows come from benchmarks/test_bench_s2rope_attention.py; until it has
  run on the H100 the one row is an estimate), or, with VPOG_ATTN_AUTOTUNE=1, the fastest path
  measured on the first call of each key (cached for the process).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vpog._backend import (
    get_default_backend,
    register_op,
    select_backend,
    warn_once,
)

log = logging.getLogger(__name__)

DEFAULT_N = (10, 10, 6, 6)


_SPEC = register_op(
    "s2rope_attention",
    backends=("reference", "triton", "triton_rope_sdpa"),
    auto={"cuda": ("triton_rope_sdpa", "triton"), "cpu": ()},
    notes="reference: PyTorch rotation + SDPA; triton: fused kernel; triton_rope_sdpa: Triton rotation + SDPA",
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


# --------------------------------------------------------------------------------------------
# Fast paths: pair tables, path names, the measured "auto" table

FUSED_HEAD_DIMS = (32, 64, 128)
FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

# A path is a backend plus, for the pre-pass, the SDPA kernel tried first.
PATHS = ("triton", "triton_rope_sdpa:cudnn", "triton_rope_sdpa:flash", "reference")


@dataclass(frozen=True)
class AutoRule:
    """One row of the "auto" table: the path for inputs that match every field (None matches all).

    n_range is (lo, hi]: lo < N <= hi. mode is "fwd" (no gradient needed) or "train" (fwd + bwd).
    """

    path: str
    dtypes: tuple[str, ...] | None = None
    head_dims: tuple[int, ...] | None = None
    n_range: tuple[float, float] = (0, math.inf)
    modes: tuple[str, ...] | None = None
    source: str = ""

    def matches(self, dtype: torch.dtype, head_dim: int, n: int, mode: str) -> bool:
        return (
            (self.dtypes is None or str(dtype).removeprefix("torch.") in self.dtypes)
            and (self.head_dims is None or head_dim in self.head_dims)
            and self.n_range[0] < n <= self.n_range[1]
            and (self.modes is None or mode in self.modes)
        )


# First matching row wins. Confirm (or replace) these rows with the numbers of
# benchmarks/test_bench_s2rope_attention.py on the H100; docs/s2rope_attention.md explains them.
AUTO_TABLE: list[AutoRule] = [
    AutoRule(
        "triton_rope_sdpa:cudnn",
        source="benchmarks/RESULTS.md baselines (H100, bf16): cuDNN SDPA is the fastest measured attention, "
        "fwd and bwd; "
        "the pre-pass moves 4 B H N D elements each way (~45 us fwd, ~45 us bwd at B=32, H=12, N=1378, "
        "D=64 at 3 TB/s: +4% on 2.16 ms fwd+bwd). The fused kernel is unmeasured: not chosen until it is.",
    ),
]


def _n_bucket(n: int) -> int:
    return 1 << max(4, (int(n) - 1).bit_length())


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


def _path_unsupported(path: str, q: torch.Tensor) -> str | None:
    """None when `path` handles q's dtype and head dim, else why not (device checks are separate)."""
    if path == "reference":
        return None
    if q.dtype not in FAST_DTYPES:
        return f"q, k, v dtype {q.dtype} (the Triton paths take {', '.join(map(str, FAST_DTYPES))})"
    if path == "triton" and q.shape[-1] not in FUSED_HEAD_DIMS:
        return f"head dim D = {q.shape[-1]} (the fused kernel takes {FUSED_HEAD_DIMS})"
    if path == "triton" and q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return "bfloat16 in the Triton interpreter (its tl.dot multiplies bfloat16 bit patterns, triton#11584)"
    return None


def _sdpa_context(which: str, device: torch.device):
    """Make SDPA try cuDNN (or flash) first, then the others; a no-op off CUDA."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    first = SDPBackend.CUDNN_ATTENTION if which == "cudnn" else SDPBackend.FLASH_ATTENTION
    order = [first] + [
        b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first
    ]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch < 2.6: no priority order, the listed backends are allowed in torch's order
        return sdpa_kernel(order)


def _run_path(path, q, k, v, pos, n, base_xy, f0_s, base_s):
    if path == "reference":
        return s2rope_attention_reference(q, k, v, pos, n, base_xy, f0_s, base_s)
    reason = _path_unsupported(path, q)
    if reason is not None:
        raise ValueError(f"s2rope_attention path '{path}' does not take {reason}")
    pos32 = pos if pos.dtype == torch.float32 else pos.float()
    pair_idx, pair_freq = s2rope_pair_tables(n, base_xy, f0_s, base_s, q.device)
    if path == "triton":
        from vpog.kernels.s2rope_attention import s2rope_attention_fused

        return s2rope_attention_fused(q, k, v, pos32, pair_idx, pair_freq)
    from vpog.kernels.s2rope_rotate import S2RopeRotateFunction

    qr, kr = S2RopeRotateFunction.apply(q, k, pos32, pair_idx, pair_freq)
    with _sdpa_context(path.split(":")[1], q.device):
        return F.scaled_dot_product_attention(qr, kr, v)


# --------------------------------------------------------------------------------------------
# "auto": the measured table, or a first-call measurement (VPOG_ATTN_AUTOTUNE=1)

_TUNED: dict[tuple, str] = {}


def _autotune_enabled() -> bool:
    return os.environ.get("VPOG_ATTN_AUTOTUNE", "0").lower() not in ("", "0", "false", "no", "off")


def _mode(q, k, v) -> str:
    return "train" if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad) else "fwd"


def _can_measure() -> bool:
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _time_ms(fn, reps: int = 5) -> float:
    fn()  # compiles and autotunes the Triton kernels
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def measure_s2rope_attention_paths(q, k, v, pos, n=DEFAULT_N, base_xy=100.0, f0_s=4.0, base_s=32.0,
                                   mode: str = "train", paths: Sequence[str] = PATHS) -> dict[str, float]:
    """Milliseconds per call of every path that runs on these CUDA inputs (fwd, or fwd + bwd for "train")."""
    if mode not in ("fwd", "train"):
        raise ValueError(f"mode must be 'fwd' or 'train', got '{mode}'")
    n = tuple(int(x) for x in n)
    qd, kd, vd = (t.detach().requires_grad_(mode == "train") for t in (q, k, v))
    grad = torch.randn_like(qd) if mode == "train" else None
    times = {}
    for path in paths:
        if _path_unsupported(path, q) is not None:
            continue

        def step(path=path):
            with torch.set_grad_enabled(mode == "train"):
                out = _run_path(path, qd, kd, vd, pos, n, base_xy, f0_s, base_s)
                if grad is not None:
                    torch.autograd.grad(out, (qd, kd, vd), grad)

        try:
            times[path] = _time_ms(step)
        except Exception as exc:  # a path that cannot run this shape here is not a candidate
            log.info("s2rope_attention autotune: path %s failed: %s: %s", path, type(exc).__name__, exc)
    return times


def s2rope_attention_auto_path(q, k, v, pos, n=DEFAULT_N, base_xy=100.0, f0_s=4.0, base_s=32.0) -> str:
    """The path backend="auto" takes for these inputs (one of PATHS)."""
    choice = select_backend("s2rope_attention", "auto", q.device)
    if choice == "reference" or q.device.type != "cuda" or _path_unsupported("triton_rope_sdpa:cudnn", q):
        return "reference"
    mode = _mode(q, k, v)
    D, N = q.shape[-1], q.shape[-2]
    key = (torch.cuda.get_device_name(q.device), str(q.dtype), D, _n_bucket(N), mode)
    if key in _TUNED:
        return _TUNED[key]
    if _autotune_enabled() and _can_measure():
        times = measure_s2rope_attention_paths(q, k, v, pos, n, base_xy, f0_s, base_s, mode)
        if times:
            _TUNED[key] = min(times, key=times.get)
            log.info("s2rope_attention autotune %s: %s (%s)", key, _TUNED[key],
                     ", ".join(f"{p} {t:.3f} ms" for p, t in sorted(times.items(), key=lambda x: x[1])))
            return _TUNED[key]
    for rule in AUTO_TABLE:
        if rule.matches(q.dtype, D, N, mode) and _path_unsupported(rule.path, q) is None:
            return rule.path
    return "triton_rope_sdpa:cudnn"


def s2rope_attention(q, k, v, pos, n=DEFAULT_N, base_xy=100.0, f0_s=4.0, base_s=32.0, backend="auto"):
    """Attention with S2RoPE applied to q and k (non-causal, scale 1/sqrt(D)).

    q, k, v: [B, H, N, D] float16 / bfloat16 / float32 / float64, one device, any strides.
    pos: [B, N, 4] token positions (y, x, s1, s2), float32 (other float dtypes are cast); zeros
    leave a token unrotated. n: pair counts (n_y, n_x, n_s1, n_s2) with 2 sum(n) = D.
    backend: "auto" | "reference" | "triton" (fused kernel) | "triton_rope_sdpa" (Triton rotation
    pre-pass + SDPA). A forced fast backend raises ValueError for a dtype or head dim it does not take.
    Returns [B, H, N, D] in q's dtype (contiguous on the Triton paths); differentiable in q, k, v.
    """
    _check_inputs(q, k, v, pos, n)
    n = tuple(int(x) for x in n)
    choice = select_backend("s2rope_attention", backend, q.device)
    default = get_default_backend()
    requested = backend if backend != "auto" else default if default in _SPEC.backends else "auto"
    if q.numel() == 0 or choice == "reference":
        path = "reference"
    elif requested == "auto":
        path = s2rope_attention_auto_path(q, k, v, pos, n, base_xy, f0_s, base_s)
    elif choice == "triton":
        path = "triton"
    else:
        path = next((r.path for r in AUTO_TABLE if r.path.startswith("triton_rope_sdpa")
                     and r.matches(q.dtype, q.shape[-1], q.shape[-2], _mode(q, k, v))),
                    "triton_rope_sdpa:cudnn")
    if path != "reference" and backend == "auto" and _path_unsupported(path, q) is not None:
        warn_once(f"vpog.ops.s2rope_attention: using the reference path ({_path_unsupported(path, q)})")
        path = "reference"
    return _run_path(path, q, k, v, pos, n, base_xy, f0_s, base_s)
