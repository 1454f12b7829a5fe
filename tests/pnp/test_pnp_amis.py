"""AMIS sampler: the C++/CUDA op against the PyTorch reference, proposal fits.

Tolerances: float64 1e-8 (samples, costs, log q; relative to the largest magnitude). float32: the
proposal fits amplify rounding (6x6 covariance inverses of ill-conditioned J^T J), so samples are
only compared in float64; in float32 the quantity the loss uses, logsumexp(-C - log q), agrees to
1e-3 relative (mostly a common offset of log q from the proposals' log-determinants, which moves the
loss by a constant and leaves its gradient alone).
"""

from __future__ import annotations

import pytest
import torch

from vpog._backend import OPS
from vpog.ops.pnp_amis import amis, amis_reference, initial_proposal, refit_proposal
from vpog.pnp.testing import random_amis_inputs

needs_cpu_ext = pytest.mark.skipif(OPS["pnp_amis"].unavailable_reason("cpu", torch.device("cpu")) is not None,
                                   reason="vpog._C (C++ CPU kernels) not built")


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _setup(B, N, dtype, device="cpu", R=4, S=32, seed=0):
    return random_amis_inputs(B, N, dtype, device, rounds=R, samples=S, seed=seed)


def _compare(backend, device, dtype, B, N, R, S):
    args = _setup(B, N, dtype, device, R, S)
    ref = amis_reference(*args, 0.01)
    out = amis(*args, 0.01, backend=backend)
    assert out.samples.shape == (R * S, B, 7) and out.cost.shape == out.log_q.shape == (R * S, B)
    if dtype == torch.float64:
        for a, b in zip(out, ref):
            assert _rel(a, b) < 1e-8, _rel(a, b)
    lse = lambda r: torch.logsumexp(-r.cost - r.log_q, dim=0)
    assert _rel(lse(out), lse(ref)) < (1e-10 if dtype == torch.float64 else 1e-3)


@needs_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,N,R,S", [(3, 21, 4, 32), (2, 9, 2, 37), (1, 40, 1, 8)])
def test_cpu_matches_reference(dtype, B, N, R, S):
    _compare("cpu", "cpu", dtype, B, N, R, S)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("B,N,R,S", [(5, 150, 4, 128), (3, 21, 3, 200), (2, 9, 2, 37)])
def test_cuda_matches_reference(dtype, B, N, R, S):
    _compare("cuda", "cuda", dtype, B, N, R, S)


def test_initial_proposal_is_the_laplace_fit():
    x3d, x2d, w2d, K, delta, pose, jtj, noise = _setup(3, 30, torch.float64)
    prop = initial_proposal(pose, jtj)
    cov = torch.linalg.inv(jtj)
    assert torch.allclose(prop.t_loc, pose[:, :3])
    assert torch.allclose(prop.t_tril @ prop.t_tril.transpose(-1, -2), cov[:, :3, :3], rtol=1e-10)
    assert (torch.triu(prop.r_tril, 1) == 0).all() and (prop.r_tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    # the rotation proposal concentrates on +-q*: q* is (nearly) its principal direction
    lam = prop.r_tril @ prop.r_tril.transpose(-1, -2)
    evals, evecs = torch.linalg.eigh(lam)
    assert torch.allclose((evecs[..., -1] * pose[:, 3:]).sum(-1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_refit_with_equal_weights_is_the_sample_moments():
    g = torch.Generator().manual_seed(1)
    samples = torch.randn(50, 2, 7, dtype=torch.float64, generator=g)
    samples[..., 3:] = samples[..., 3:] / samples[..., 3:].norm(dim=-1, keepdim=True)
    prop = refit_proposal(samples, torch.zeros(50, 2, dtype=torch.float64), acg_mle_iter=0)
    t = samples[..., :3]
    mean = t.mean(0)
    cov = ((t - mean).unsqueeze(-1) * (t - mean).unsqueeze(-2)).mean(0)
    assert torch.allclose(prop.t_loc, mean) and torch.allclose(prop.t_tril @ prop.t_tril.transpose(-1, -2), cov)
    # with zero ACG iterations the rotation covariance is I, plus the dispersion det(I)^(1/4) * 1e-3
    want = torch.eye(4, dtype=torch.float64) * (1 + 1e-3) ** 0.5
    assert torch.allclose(prop.r_tril, want.expand(2, 4, 4))


def test_weight_concentrates_refit():
    """A single dominant weight moves the translation proposal onto that sample."""
    samples = torch.randn(20, 1, 7, dtype=torch.float64)
    samples[..., 3:] = samples[..., 3:] / samples[..., 3:].norm(dim=-1, keepdim=True)
    logw = torch.full((20, 1), -1000.0, dtype=torch.float64)
    logw[7] = 0
    prop = refit_proposal(samples, logw)
    assert torch.allclose(prop.t_loc, samples[7, :, :3])


@needs_cpu_ext
def test_op_checks_and_opcheck():
    x3d, x2d, w2d, K, delta, pose, jtj, noise = _setup(2, 12, torch.float64, R=2, S=4)
    with pytest.raises(ValueError, match="jtj"):
        torch.ops.vpog.pnp_amis(x3d, x2d, w2d, K, delta, pose, jtj[:, :5], *noise, 0.01, 3, 1e-3, 1e-5)
    with pytest.raises(ValueError, match="normal_r"):
        torch.ops.vpog.pnp_amis(x3d, x2d, w2d, K, delta, pose, jtj, noise.normal_t, noise.chi2,
                                noise.normal_r[..., :3], 0.01, 3, 1e-3, 1e-5)
    torch.library.opcheck(torch.ops.vpog.pnp_amis.default,
                          (x3d, x2d, w2d, K, delta, pose, jtj, *noise, 0.01, 3, 1e-3, 1e-5))


def test_many_rounds_use_the_reference_under_auto():
    """More AMIS rounds than the extension holds on chip: auto runs the reference, a forced fast path says why."""
    from vpog.ops.pnp_amis import MAX_FAST_ROUNDS

    R, S = MAX_FAST_ROUNDS + 1, 4
    args = _setup(2, 16, torch.float64, R=R, S=S)
    out = amis(*args, 0.01, backend="auto")
    ref = amis_reference(*args, 0.01)
    assert out.samples.shape == (R * S, 2, 7)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="at most"):
        amis(*args, 0.01, backend="cpu")
