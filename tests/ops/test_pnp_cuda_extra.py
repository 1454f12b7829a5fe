"""CUDA kernels of the PnP ops beyond the per-op parity tests: launch configurations and inputs that
the kernels treat specially (GPU only; every case is marked cuda).

- pnp_solve: problems the warp kernel leaves early (non-finite input) or with fewer points than
  lanes, next to good ones; a large batch against the C++ CPU path (same per-problem code).
- pnp_cost: more problems than gridDim.y allows (65535, the kernels loop), non-contiguous inputs,
  stride-0 upstream gradients, the same arithmetic as the C++ CPU path.
- AMIS: the most rounds the kernel keeps on chip, sample and point tails.
- All ops: empty batches, a side stream, a second GPU, deterministic results, no host sync.

Tolerances (relative to the largest magnitude of the compared tensor):
    float64 vs reference: solve 1e-7 (as test_pnp_solve), cost 1e-10 (as test_pnp_cost), AMIS 1e-8
    float32 vs reference: solve 1e-3 pose and cost, 2e-3 J^T J (10 degree initialisations)
    CUDA vs C++ CPU, float64: cost and its point gradients 1e-12 (the same serial sum per pose and
    per point, only FMA contraction differs); solve 1e-7 (warp vs serial sums)
"""

from __future__ import annotations

import pytest
import torch

from vpog.ops.pnp_amis import MAX_FAST_ROUNDS, amis, amis_reference
from vpog.ops.pnp_cost import adaptive_huber_delta, pnp_cost, pnp_cost_reference
from vpog.ops.pnp_distributions import draw_amis_noise
from vpog.ops.pnp_solve import draw_random_init, pnp_solve, pnp_solve_reference
from vpog.pnp.testing import (
    assert_same_solution,
    perturb_poses,
    random_amis_inputs,
    random_pnp_problems,
    relative_error,
)

pytestmark = pytest.mark.cuda

SOLVE_TOL = {torch.float64: (1e-7, 1e-7, 1e-7), torch.float32: (1e-3, 1e-3, 2e-3)}


def _problem(B, N, dtype, seed=0, angle=10.0, device="cuda"):
    g = torch.Generator().manual_seed(seed)
    p = random_pnp_problems(B, N, noise=2.0, dtype=dtype, generator=g)
    init = perturb_poses(p.pose, 0.03, angle, generator=g)
    return [t.to(device) for t in (p.x3d, p.x2d, p.w2d, p.K, init)]


def _solve_pair(x3d, x2d, w2d, K, init, random_init, num_iter=10, proposals=8, points=6, seed=1):
    """(CUDA op result, reference result) on the same random-init draws."""
    delta = adaptive_huber_delta(x2d, w2d)
    index, quat = draw_random_init(w2d, proposals, points, torch.Generator(device=x3d.device).manual_seed(seed))
    pose_init = None if random_init else init
    ref = pnp_solve_reference(x3d, x2d, w2d, K, delta, pose_init, num_iter, False, index, quat, 3, False)
    out = torch.ops.vpog.pnp_solve(x3d, x2d, w2d, K, delta, pose_init, index, quat, num_iter, 3, False, False, 0.01)
    return type(ref)(*out), ref


# --------------------------------------------------------------------------------------------
# pnp_solve


@pytest.mark.parametrize("random_init", [False, True])
def test_solve_degenerate_neighbours(random_init):
    """Warps that leave early (NaN / inf input) or see no usable point sit next to good problems."""
    x3d, x2d, w2d, K, init = _problem(9, 12, torch.float64, seed=8, angle=5.0)
    w2d[1] = 0  # all weights zero
    w2d[2, 3:] = 0  # 3 weighted points
    x3d[3, :, 2] -= 5.0  # everything behind the camera
    x2d[4, 5, 0] = float("nan")
    K[5, 0, 0] = float("inf")
    init[6, 3] = float("nan")  # non-finite pose_init (given-init case only)
    out, ref = _solve_pair(x3d, x2d, w2d, K, init, random_init, proposals=8, points=4)
    for t in (out.pose, out.cost, out.jtj, out.cost_init):
        assert torch.isfinite(t).all()
    assert_same_solution(out, ref, SOLVE_TOL[torch.float64])
    assert bool(out.valid[0]) and bool(out.valid[7]) and bool(out.valid[8])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,N", [(1, 4), (5, 7), (6, 33)])
@pytest.mark.parametrize("random_init", [False, True])
def test_solve_fewer_points_than_lanes(dtype, B, N, random_init):
    x3d, x2d, w2d, K, init = _problem(B, N, dtype, seed=B * 100 + N)
    out, ref = _solve_pair(x3d, x2d, w2d, K, init, random_init, proposals=4, points=min(N, 5))
    assert_same_solution(out, ref, SOLVE_TOL[dtype])


@pytest.mark.parametrize("random_init", [False, True])
def test_solve_large_batch_matches_cpu(random_init):
    """256 blocks of the warp kernel (and 64 proposals x 1024 problems) vs the C++ CPU loop."""
    x3d, x2d, w2d, K, init = _problem(1024, 256, torch.float64, seed=3, angle=20.0)
    delta = adaptive_huber_delta(x2d, w2d)
    index, quat = draw_random_init(w2d, 64, 16, torch.Generator(device="cuda").manual_seed(2))
    pose_init = None if random_init else init
    args = (delta, pose_init, index, quat, 10, 3, False, False, 0.01)
    out = torch.ops.vpog.pnp_solve(x3d, x2d, w2d, K, *args)
    cpu = torch.ops.vpog.pnp_solve(*(t.cpu() for t in (x3d, x2d, w2d, K, delta)),
                                   *(None if t is None else t.cpu() for t in (pose_init, index, quat)), *args[4:])
    for a, b in zip(out[:3], cpu[:3]):
        assert relative_error(a.cpu(), b) < 1e-7
    assert torch.equal(out[3].cpu(), cpu[3])


def test_solve_noncontiguous_inputs():
    x3d, x2d, w2d, K, init = _problem(7, 40, torch.float64, seed=4)
    delta = adaptive_huber_delta(x2d, w2d)
    nc = [t.transpose(0, 1).contiguous().transpose(0, 1) for t in (x3d, x2d, w2d)]
    init_nc = init.t().contiguous().t()
    K_expanded = K[:1].expand(7, 3, 3)  # stride 0
    assert not any(t.is_contiguous() for t in (*nc, init_nc, K_expanded))
    a = pnp_solve(*nc, K_expanded, init_nc, 10, backend="cuda", delta=delta)
    b = pnp_solve(x3d, x2d, w2d, K[:1].repeat(7, 1, 1), init, 10, backend="cuda", delta=delta)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


# --------------------------------------------------------------------------------------------
# pnp_cost


def _cost_inputs(B, N, P, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    prob = random_pnp_problems(B, N, noise=2.0, dtype=dtype, generator=g)
    x3d = prob.x3d.clone()
    x3d[0, :2, 2] -= 2.0  # depth clamp
    delta = adaptive_huber_delta(prob.x2d, prob.w2d)
    pose = prob.pose[None].repeat(P, 1, 1)
    pose[..., :3] += 0.02 * torch.randn((P, B, 3), dtype=dtype, generator=g)
    pose[..., 3:] += 0.2 * torch.randn((P, B, 4), dtype=dtype, generator=g)
    return [t.cuda() for t in (pose, x3d, prob.x2d, prob.w2d, prob.K, delta)]


def _cost_check(pose, x3d, x2d, w2d, K, delta, grad, tol):
    ins_r = [t.clone().requires_grad_() for t in (x3d, x2d, w2d, delta)]
    ins_f = [t.clone().requires_grad_() for t in (x3d, x2d, w2d, delta)]
    ref = pnp_cost_reference(pose, ins_r[0], ins_r[1], ins_r[2], K, ins_r[3])
    out = pnp_cost(pose, ins_f[0], ins_f[1], ins_f[2], K, ins_f[3], backend="cuda")
    assert relative_error(out, ref) < tol
    g_ref = torch.autograd.grad(ref, ins_r, grad)
    g_out = torch.autograd.grad(out, ins_f, grad)
    for name, a, b in zip(("x3d", "x2d", "w2d", "delta"), g_out, g_ref):
        assert relative_error(a, b) < tol, f"grad {name}: {relative_error(a, b)}"


def test_cost_more_problems_than_grid_y():
    """B > 65535: the kernels loop over problems beyond gridDim.y (forward and backward)."""
    pose, x3d, x2d, w2d, K, delta = _cost_inputs(70001, 5, 3, torch.float64)
    grad = torch.randn((3, 70001), dtype=torch.float64, device="cuda")
    _cost_check(pose, x3d, x2d, w2d, K, delta, grad, 1e-10)


def test_cost_noncontiguous_inputs_and_expanded_grad():
    pose, x3d, x2d, w2d, K, delta = _cost_inputs(6, 150, 70, torch.float64, seed=1)
    x3d = x3d.transpose(1, 2).contiguous().transpose(1, 2)
    pose = pose.transpose(0, 1).contiguous().transpose(0, 1)
    K = K[:1].expand(6, 3, 3)
    assert not (x3d.is_contiguous() or pose.is_contiguous() or K.is_contiguous())
    grad = torch.randn((1, 6), dtype=torch.float64, device="cuda").expand(70, 6)  # stride 0
    _cost_check(pose, x3d, x2d, w2d, K, delta, grad, 1e-10)
    # a sliced (offset, strided) upstream gradient
    big = torch.randn((140, 12), dtype=torch.float64, device="cuda")
    _cost_check(pose, x3d, x2d, w2d, K, delta, big[::2, 1::2], 1e-10)


def test_cost_same_arithmetic_as_cpu():
    pose, x3d, x2d, w2d, K, delta = _cost_inputs(5, 300, 129, torch.float64, seed=2)
    grad = torch.randn((129, 5), dtype=torch.float64, device="cuda")
    grad[3] = 0  # skipped samples
    args = (pose, x3d, x2d, w2d, K, delta)
    cpu_args = [t.cpu() for t in args]
    out = torch.ops.vpog.pnp_cost_fwd(*args, 0.01)
    assert relative_error(out.cpu(), torch.ops.vpog.pnp_cost_fwd(*cpu_args, 0.01)) < 1e-12
    g_out = torch.ops.vpog.pnp_cost_bwd(grad, *args, 0.01)
    g_cpu = torch.ops.vpog.pnp_cost_bwd(grad.cpu(), *cpu_args, 0.01)
    for a, b in zip(g_out, g_cpu):
        assert relative_error(a.cpu(), b) < 1e-12


# --------------------------------------------------------------------------------------------
# AMIS


def _amis_args(B, N, R, S, dtype, seed=0, device="cuda"):
    return random_amis_inputs(B, N, dtype, device, rounds=R, samples=S, seed=seed)


@pytest.mark.parametrize("B,N,R,S", [(2, 130, MAX_FAST_ROUNDS, 20), (1, 3, 2, 129)])
def test_amis_max_rounds_and_tails(B, N, R, S):
    args = _amis_args(B, N, R, S, torch.float64)
    ref = amis_reference(*args, 0.01)
    out = amis(*args, 0.01, backend="cuda")
    for a, b in zip(out, ref):
        assert relative_error(a, b) < 1e-8, relative_error(a, b)


# --------------------------------------------------------------------------------------------
# All ops


def test_empty_batches():
    """B = 0, N = 0, P = 0 through the dispatchers and the ops themselves (no zero-size launch)."""
    x3d, x2d, w2d, K, init = _problem(3, 8, torch.float32)
    delta = torch.ones(3, device="cuda")
    out = pnp_solve(x3d[:0], x2d[:0], w2d[:0], K[:0], None, 5, backend="cuda")
    assert out.pose.shape == (0, 7) and out.jtj.shape == (0, 6, 6)
    out = pnp_solve(x3d[:, :0], x2d[:, :0], w2d[:, :0], K, init, 5, backend="cuda")
    assert out.pose.shape == (3, 7) and not out.valid.any()
    out = torch.ops.vpog.pnp_solve(x3d[:0], x2d[:0], w2d[:0], K[:0], delta[:0], init[:0], None, None, 5, 3, False,
                                   False, 0.01)
    assert out[0].shape == (0, 7)
    out = torch.ops.vpog.pnp_solve(x3d[:, :0], x2d[:, :0], w2d[:, :0], K, delta, init, None, None, 5, 3, False,
                                   False, 0.01)
    assert torch.equal(out[0], torch.tensor([[0.0, 0, 0, 1, 0, 0, 0]], device="cuda").expand(3, 7))
    assert pnp_cost(init[None, :0], x3d[:0], x2d[:0], w2d[:0], K[:0], delta[:0], backend="cuda").shape == (1, 0)
    assert pnp_cost(init[None].expand(0, 3, 7), x3d, x2d, w2d, K, delta, backend="cuda").shape == (0, 3)
    x3d_e = x3d[:, :0].clone().requires_grad_()
    c = pnp_cost(init[None], x3d_e, x2d[:, :0], w2d[:, :0], K, delta, backend="cuda")
    assert torch.equal(c, torch.zeros(1, 3, device="cuda"))
    c.sum().backward()
    assert x3d_e.grad.shape == (3, 0, 3)
    jtj = torch.eye(6, device="cuda").expand(3, 6, 6)
    noise = draw_amis_noise(2, 4, 0, device="cuda")
    assert amis(x3d[:0], x2d[:0], w2d[:0], K[:0], delta[:0], init[:0], jtj[:0], noise, 0.01,
                backend="cuda").samples.shape == (8, 0, 7)
    out = torch.ops.vpog.pnp_amis(x3d[:0], x2d[:0], w2d[:0], K[:0], delta[:0], init[:0], jtj[:0], *noise, 0.01, 3,
                                  1e-3, 1e-5)
    assert out[0].shape == (8, 0, 7)
    noise = draw_amis_noise(2, 4, 3, device="cuda")
    out = torch.ops.vpog.pnp_amis(x3d[:, :0], x2d[:, :0], w2d[:, :0], K, delta, init, jtj, *noise, 0.01, 3, 1e-3,
                                  1e-5)
    assert torch.equal(out[1], torch.zeros(8, 3, device="cuda")) and torch.isfinite(out[0]).all()
    torch.cuda.synchronize()


def _inputs_all(device, dtype=torch.float64):
    return _problem(10, 50, dtype, seed=6, device=device)


def _run_all(x3d, x2d, w2d, K, init):
    """One call of every kernel: solve (with the random-sample init), AMIS, cost forward and backward."""
    device, dtype = x3d.device, x3d.dtype
    sol = pnp_solve(x3d, x2d, w2d, K, init, 5, backend="cuda", force_init_solve=True, init_proposals=8,
                    generator=torch.Generator(device=device).manual_seed(0))
    delta = adaptive_huber_delta(x2d, w2d)
    noise = draw_amis_noise(3, 40, 10, dtype, device, torch.Generator(device=device).manual_seed(1))
    smp = amis(x3d, x2d, w2d, K, delta, sol.pose, sol.jtj, noise, 0.01, backend="cuda")
    w = w2d.clone().requires_grad_()
    cost = pnp_cost(smp.samples, x3d, x2d, w, K, delta, backend="cuda")
    (grad_w2d,) = torch.autograd.grad(cost.sum(), w)
    return [*sol, *smp, cost, grad_w2d]


def test_deterministic_and_current_stream():
    """Same bits on a second run, and on a side stream whose inputs are written late (a kernel
    launched on another stream than the current one would read them before they are written)."""
    inputs = _inputs_all("cuda")
    base = _run_all(*inputs)
    assert all(torch.equal(a, b) for a, b in zip(base, _run_all(*inputs)))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # keep the side stream busy while everything below is queued
        late = [t * 2 / 2 for t in inputs]  # exact copies, written after the sleep
        out = _run_all(*late)
    torch.cuda.current_stream().wait_stream(side)
    assert all(torch.equal(a, b) for a, b in zip(base, out))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_second_device():
    base = _run_all(*_inputs_all("cuda:0"))
    inputs = _inputs_all("cuda:1")
    with torch.cuda.device(0):  # current device 0, tensors on device 1
        out = _run_all(*inputs)
    assert all(b.device == torch.device("cuda:1") for b in out)
    assert all(torch.equal(a, b.to("cuda:0")) for a, b in zip(base, out))


def test_no_host_synchronisation():
    inputs = _inputs_all("cuda", torch.float32)
    _run_all(*inputs)  # warm-up (lazy initialisation may synchronise)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _run_all(*inputs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
