"""Benchmark S2RoPE attention: every backend side by side, bf16, forward and forward + backward, one run.

GPU shapes (the issue's; D = 64, n = (10, 10, 6, 6)):
    per_image  B=224, H=12, N=196     (ViT-B encoder, one crop per sequence)
    group_b    B=32,  H=12, N=1378    (ViT-B group attention: query + 6 templates + unseen tokens)
    group_l    B=32,  H=16, N=1378    (ViT-L)
Providers (the three backends by name, "auto", two baselines):
    cudnn_no_rope         cuDNN SDPA without any rotation: the limit
    reference             the eager PyTorch reference (rotation + default SDPA)
    compiled_rope_cudnn   torch.compile'd rotation + cuDNN SDPA
    triton                the fused kernel (rotation inside flash attention)
    triton_rope_sdpa      Triton rotation pre-pass + SDPA, cuDNN first
    auto                  what backend="auto" picks (its backend is stored as `auto_backend`)
Each case stores TFLOP/s (4 B H N^2 D forward, 2.5x that backward) and `vs_cudnn_no_rope`
(time of this provider / time of the limit) in extra_info; the conftest adds the speedup over the
reference of the same group. These numbers are what may change the "auto" rule
(docs/s2rope_attention.md).
CPU: a tiny case through the Triton interpreter (correctness of the harness only, not a timing).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vpog._backend import select_backend
from vpog.ops.s2rope_attention import s2rope_attention, s2rope_pair_tables

N_SPLIT = (10, 10, 6, 6)
GPU_SHAPES = {"per_image": (224, 12, 196, 64), "group_b": (32, 12, 1378, 64), "group_l": (32, 16, 1378, 64)}
PROVIDERS = ("cudnn_no_rope", "reference", "compiled_rope_cudnn", "triton", "triton_rope_sdpa", "auto")
_MEANS: dict[tuple, float] = {}


def _rope_compilable(x, pos, pair_freq, n):
    """apply_s2rope written with static slices only (no data-dependent shapes), for torch.compile."""
    ang = (pos[..., None, :] * pair_freq.T).sum(-1)[:, None]  # [B, 1, N, D/2] float32
    cos, sin = ang.cos(), ang.sin()
    xf = x.float()
    out, start, pair = [], 0, 0
    for n_g in n:
        x1, x2 = xf[..., start:start + n_g], xf[..., start + n_g:start + 2 * n_g]
        c, s = cos[..., pair:pair + n_g], sin[..., pair:pair + n_g]
        out += [x1 * c - x2 * s, x2 * c + x1 * s]
        start, pair = start + 2 * n_g, pair + n_g
    return torch.cat(out, -1).to(x.dtype)


_rope_compiled = None


def _cudnn_sdpa(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


def _provider_fn(provider, pos, device):
    global _rope_compiled
    if provider == "cudnn_no_rope":
        return _cudnn_sdpa
    if provider == "compiled_rope_cudnn":
        if _rope_compiled is None:
            _rope_compiled = torch.compile(_rope_compilable)
        _, pair_freq = s2rope_pair_tables(N_SPLIT, device=device)
        return lambda q, k, v: _cudnn_sdpa(_rope_compiled(q, pos, pair_freq, N_SPLIT),
                                           _rope_compiled(k, pos, pair_freq, N_SPLIT), v)
    return lambda q, k, v: s2rope_attention(q, k, v, pos, N_SPLIT, backend=provider)


def _setup(B, H, N, D, dtype, device, train):
    q, k, v = (torch.randn(B, H, N, D, device=device, dtype=dtype).requires_grad_(train) for _ in range(3))
    pos = torch.rand(B, N, 4, device=device) * torch.tensor([13.0, 13.0, 3.0, 3.0], device=device)
    grad = torch.randn(B, H, N, D, device=device, dtype=dtype) if train else None
    return q, k, v, pos, grad


def _bench(benchmark, run_bench, shape_name, shape, mode, provider, dtype, device):
    B, H, N, D = shape
    train = mode == "fwd_bwd"
    q, k, v, pos, grad = _setup(B, H, N, D, dtype, device, train)
    attn = _provider_fn(provider, pos, device)

    def step():
        if train:
            out = attn(q, k, v)
            return torch.autograd.grad(out, (q, k, v), grad)
        with torch.no_grad():
            return attn(q, k, v)

    benchmark.group = f"s2rope_attention {shape_name} {mode} {str(dtype).removeprefix('torch.')}"
    flops = 4 * B * H * N * N * D * (3.5 if train else 1.0)
    run_bench(benchmark, step, backend=provider, op="s2rope_attention", items=flops / 1e12, unit="TFLOP")
    if provider == "auto":
        benchmark.extra_info["auto_backend"] = select_backend("s2rope_attention", "auto", device)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        _MEANS[(shape_name, mode, provider)] = stats.stats.mean
        limit = _MEANS.get((shape_name, mode, "cudnn_no_rope"))
        if limit:
            benchmark.extra_info["vs_cudnn_no_rope"] = stats.stats.mean / limit


@pytest.mark.cuda
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape_name", list(GPU_SHAPES))
def test_bench_s2rope_attention_cuda(benchmark, run_bench, shape_name, mode, provider):
    _bench(benchmark, run_bench, shape_name, GPU_SHAPES[shape_name], mode, provider, torch.bfloat16,
           torch.device("cuda"))


@pytest.mark.parametrize("provider", ["reference", "triton", "triton_rope_sdpa"])
@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
def test_bench_s2rope_attention_cpu(benchmark, run_bench, mode, provider):
    """Tiny CPU case: the reference, and the Triton paths through the interpreter."""
    from vpog._backend import triton_interpreter, triton_status

    if provider != "reference" and not (triton_status()[0] and triton_interpreter()):
        pytest.skip("Triton paths on CPU need triton and TRITON_INTERPRET=1")
    _bench(benchmark, run_bench, "tiny_cpu", (1, 2, 16, 64), mode, provider, torch.float32, torch.device("cpu"))
