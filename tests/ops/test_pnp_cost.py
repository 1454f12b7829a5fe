"""vpog.ops.pnp_cost: fast paths (C++ CPU, CUDA) against the PyTorch reference, gradients, errors.

Tolerances (relative to the largest magnitude of the compared tensor):
    float64: 1e-10 values and gradients (same formulas, different summation order)
    float32: 2e-5 values, 1e-4 gradients
"""

from __future__ import annotations

import math

import pytest
import torch

from vpog._backend import OPS
from vpog.ops.pnp_cost import adaptive_huber_delta, pnp_cost, pnp_cost_reference
from vpog.pnp.testing import random_pnp_problems

TOL = {torch.float64: (1e-10, 1e-10), torch.float32: (2e-5, 1e-4)}


def _has(backend, device="cpu"):
    return OPS["pnp_cost"].unavailable_reason(backend, torch.device(device)) is None


needs_cpu_ext = pytest.mark.skipif(not _has("cpu"), reason="vpog._C (C++ CPU kernels) not built")


def _rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp_min(1e-30))


def _inputs(B, N, P, dtype, device="cpu", behind=True):
    g = torch.Generator().manual_seed(B * 1000 + N * 10 + P)
    prob = random_pnp_problems(B, N, noise=2.0, dtype=dtype, generator=g)
    x3d = prob.x3d.clone()
    if behind and N > 3:
        x3d[0, :3, 2] -= 2.0  # a few points end up behind the camera (depth clamp)
    delta = adaptive_huber_delta(prob.x2d, prob.w2d)
    pose = prob.pose[None].repeat(P, 1, 1)
    pose[..., :3] += 0.02 * torch.randn((P, B, 3), dtype=dtype, generator=g)
    pose[..., 3:] += 0.2 * torch.randn((P, B, 4), dtype=dtype, generator=g)  # not normalised on purpose
    move = lambda t: t.to(device)
    return move(pose), move(x3d), move(prob.x2d), move(prob.w2d), move(prob.K), move(delta)


def _compare(backend, device, B, N, P, dtype):
    pose, x3d, x2d, w2d, K, delta = _inputs(B, N, P, dtype, device)
    ins_r = [t.clone().requires_grad_() for t in (x3d, x2d, w2d, delta)]
    ins_f = [t.clone().requires_grad_() for t in (x3d, x2d, w2d, delta)]
    ref = pnp_cost_reference(pose, ins_r[0], ins_r[1], ins_r[2], K, ins_r[3])
    out = pnp_cost(pose, ins_f[0], ins_f[1], ins_f[2], K, ins_f[3], backend=backend)
    tol_v, tol_g = TOL[dtype]
    assert out.shape == ref.shape == (P, B) and out.dtype == dtype
    assert _rel(out, ref) < tol_v
    grad = torch.randn(ref.shape, dtype=dtype, device=device)
    g_ref = torch.autograd.grad(ref, ins_r, grad)
    g_out = torch.autograd.grad(out, ins_f, grad)
    for name, a, b in zip(("x3d", "x2d", "w2d", "delta"), g_out, g_ref):
        assert _rel(a, b) < tol_g, f"grad {name}: {_rel(a, b)}"


@needs_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,N,P", [(1, 4, 1), (3, 37, 5), (2, 130, 70)])
def test_cpu_matches_reference(B, N, P, dtype):
    _compare("cpu", "cpu", B, N, P, dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,N,P", [(1, 4, 1), (3, 37, 5), (5, 300, 129)])
def test_cuda_matches_reference(B, N, P, dtype):
    _compare("cuda", "cuda", B, N, P, dtype)


def test_reference_is_epropnp_huber_cost():
    """Closed form on a one-point problem: identity pose, K = I, residual and Huber regime by hand."""
    x3d = torch.tensor([[[0.3, -0.2, 2.0]]], dtype=torch.float64)
    K = torch.eye(3, dtype=torch.float64)[None]
    pose = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    x2d = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)
    w2d = torch.tensor([[[2.0, 3.0]]], dtype=torch.float64)
    e = torch.tensor([0.15 * 2.0, -0.1 * 3.0], dtype=torch.float64)
    s = float(e.norm())
    for delta, want in ((1.0, 0.5 * s * s), (0.1, 0.1 * s - 0.5 * 0.01)):
        got = pnp_cost_reference(pose, x3d, x2d, w2d, K, torch.tensor([delta], dtype=torch.float64))
        assert math.isclose(float(got), want, rel_tol=1e-14)


def test_adaptive_delta_formula():
    x2d = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    w2d = torch.full((1, 3, 2), 0.5, dtype=torch.float64)
    var = torch.var(x2d[0, :, 0]) + torch.var(x2d[0, :, 1])
    assert torch.allclose(adaptive_huber_delta(x2d, w2d, 0.5), 0.5 * 0.5 * var.sqrt())


def test_gradcheck_reference():
    pose, x3d, x2d, w2d, K, delta = _inputs(2, 6, 3, torch.float64, behind=False)
    f = lambda a, b, c, d: pnp_cost_reference(pose, a, b, c, K, d)
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_() for t in (x3d, x2d, w2d, delta)))


@needs_cpu_ext
def test_gradcheck_cpu():
    pose, x3d, x2d, w2d, K, delta = _inputs(2, 6, 3, torch.float64, behind=False)
    f = lambda a, b, c, d: pnp_cost(pose, a, b, c, K, d, backend="cpu")
    assert torch.autograd.gradcheck(f, tuple(t.requires_grad_() for t in (x3d, x2d, w2d, delta)))


@needs_cpu_ext
def test_single_pose_shape_and_opcheck():
    pose, x3d, x2d, w2d, K, delta = _inputs(3, 9, 2, torch.float32)
    out = pnp_cost(pose[0], x3d, x2d, w2d, K, delta, backend="cpu")
    assert out.shape == (3,)
    assert torch.allclose(out, pnp_cost_reference(pose[0], x3d, x2d, w2d, K, delta), rtol=2e-5)
    torch.library.opcheck(torch.ops.vpog.pnp_cost_fwd.default, (pose, x3d, x2d, w2d, K, delta, 0.01))
    grad = torch.ones(2, 3)
    torch.library.opcheck(torch.ops.vpog.pnp_cost_bwd.default, (grad, pose, x3d, x2d, w2d, K, delta, 0.01))


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_bad_inputs_raise_value_error(backend):
    pose, x3d, x2d, w2d, K, delta = _inputs(2, 5, 3, torch.float32)
    with pytest.raises(ValueError, match="x3d"):
        pnp_cost(pose, x3d[..., :2], x2d, w2d, K, delta, backend=backend)
    with pytest.raises(ValueError, match="w2d"):
        pnp_cost(pose, x3d, x2d, w2d[:, :4], K, delta, backend=backend)
    with pytest.raises(ValueError, match="K"):
        pnp_cost(pose, x3d, x2d, w2d, K.double(), delta, backend=backend)
    with pytest.raises(ValueError, match="delta"):
        pnp_cost(pose, x3d, x2d, w2d, K, delta[:1], backend=backend)
    with pytest.raises(ValueError, match="pose"):
        pnp_cost(pose[..., :6], x3d, x2d, w2d, K, delta, backend=backend)
    with pytest.raises(ValueError, match="x3d"):
        pnp_cost(pose.half(), x3d.half(), x2d.half(), w2d.half(), K.half(), delta.half(), backend=backend)
    with pytest.raises(ValueError, match="x2d must be on"):
        pnp_cost(pose, x3d, x2d.to("meta"), w2d, K, delta, backend=backend)


@needs_cpu_ext
def test_cpp_op_checks_shapes():
    pose, x3d, x2d, w2d, K, delta = _inputs(2, 5, 3, torch.float32)
    with pytest.raises(ValueError, match="pose"):
        torch.ops.vpog.pnp_cost_fwd(pose[:, :1], x3d, x2d, w2d, K, delta, 0.01)
    with pytest.raises(ValueError, match="grad_cost"):
        torch.ops.vpog.pnp_cost_bwd(torch.ones(3), pose, x3d, x2d, w2d, K, delta, 0.01)
