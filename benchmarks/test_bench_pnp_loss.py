"""Benchmark the Monte Carlo pose loss, forward + backward: reference vs the fused C++/CUDA path.

One call = the whole `MonteCarloPoseLoss` step with 512 samples (4 AMIS rounds x 128): solve from the
ground truth and the random-sample init (4 x 16 points x 3 iterations) + 5 LM iterations, AMIS
proposals, sampling and costs, the loss, and the backward pass to x3d, x2d, w2d.
    mc       without the derivative regulariser
    mc_reg   with it (one differentiable Gauss-Newton step, plain PyTorch in both paths)
Inputs are float32; the loss computes in float64 by default (`PoseLossConfig.compute_dtype`, float32
proposals break down on concentrated pose distributions); on the GPU `compute=input` also times the
float32 computation. GPU sizes (B, N) = (32, 512), (256, 64), (1024, 256). Target on an H100: mc under 5 ms
(EPro-PnP's code: 107-160 ms, benchmarks/RESULTS.md baselines). extra_info holds problems/s; the conftest adds
the speedup over the reference of the same group. CPU: small sizes.
"""

from __future__ import annotations

import pytest
import torch

from vpog._backend import OPS
from vpog.pnp.loss import MonteCarloPoseLoss, PoseLossConfig
from vpog.pnp.testing import random_pnp_problems

GPU_SIZES = [(32, 512), (256, 64), (1024, 256)]
CPU_SIZES = [(4, 64), (16, 128)]


def _bench(benchmark, run_bench, B, N, mode, backend, device, compute="float64"):
    reason = OPS["pnp_amis"].unavailable_reason(backend, torch.device(device))
    if reason and device == "cpu":  # the C++ op is optional on the CPU; on a GPU its absence must fail
        pytest.skip(reason)
    g = torch.Generator().manual_seed(0)
    p = random_pnp_problems(B, N, noise=2.0, dtype=torch.float32, generator=g)
    x3d, x2d, w2d, K, gt = (t.to(device) for t in p)
    ins = [t.clone().requires_grad_() for t in (x3d, x2d, w2d)]
    cfg = PoseLossConfig(derivative_reg=mode == "mc_reg", backend=backend, compute_dtype=compute)
    loss = MonteCarloPoseLoss(cfg).to(device).train()
    gen = torch.Generator(device=device).manual_seed(0)

    def step():
        out = loss(*ins, K, gt, generator=gen)
        return torch.autograd.grad(out.loss_mc + out.loss_reg, ins)

    benchmark.group = f"pnp_loss {mode} B={B} N={N} compute={compute} {device}"
    run_bench(benchmark, step, backend=backend, op="pnp_loss", items=B, unit="problems")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["reference", "cuda"])
@pytest.mark.parametrize("mode", ["mc", "mc_reg"])
@pytest.mark.parametrize("compute", ["float64", "input"])
@pytest.mark.parametrize("B,N", GPU_SIZES)
def test_bench_pnp_loss_cuda(benchmark, run_bench, B, N, mode, backend, compute):
    _bench(benchmark, run_bench, B, N, mode, backend, "cuda", compute)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("mode", ["mc", "mc_reg"])
@pytest.mark.parametrize("B,N", CPU_SIZES)
def test_bench_pnp_loss_cpu(benchmark, run_bench, B, N, mode, backend):
    _bench(benchmark, run_bench, B, N, mode, backend, "cpu")
