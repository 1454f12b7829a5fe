"""Proposal distributions of the Monte Carlo pose loss: densities against closed forms and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vpog.ops.pnp_distributions import (
    acg_log_prob,
    acg_sample,
    cholesky_or_identity,
    draw_amis_noise,
    student_t_log_prob,
    student_t_sample,
)


def _tril(D, B, seed):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn((B, D, D), dtype=torch.float64, generator=g)
    return torch.linalg.cholesky(A @ A.transpose(-1, -2) + 0.5 * torch.eye(D, dtype=torch.float64))


def test_student_t_log_prob_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    L = _tril(3, 4, 0)
    loc = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(6, 4, 3, dtype=torch.float64) * 2
    ours = student_t_log_prob(x, loc, L)
    for b in range(4):
        want = stats.multivariate_t(loc=loc[b].numpy(), shape=(L[b] @ L[b].T).numpy(), df=3).logpdf(x[:, b].numpy())
        np.testing.assert_allclose(ours[:, b].numpy(), want, rtol=1e-12)


def test_student_t_samples_follow_the_density():
    stats = pytest.importorskip("scipy.stats")
    L = _tril(3, 1, 1)
    loc = torch.tensor([[0.1, -0.2, 0.7]], dtype=torch.float64)
    noise = draw_amis_noise(1, 20000, 1, torch.float64, generator=torch.Generator().manual_seed(2))
    x = student_t_sample(loc, L, noise.normal_t[0], noise.chi2[0])  # [S, 1, 3]
    y = torch.linalg.solve_triangular(L[0], (x[:, 0] - loc).T, upper=False).T
    f = (y.square().sum(-1) / 3).numpy()  # |L^-1 (x - mu)|^2 / 3 ~ F(3, 3)
    assert stats.kstest(f, stats.f(3, 3).cdf).pvalue > 1e-3


def test_acg_log_prob_closed_form():
    L = _tril(4, 3, 3)
    q = torch.randn(5, 3, 4, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    lam = L @ L.transpose(-1, -2)
    m = (q.unsqueeze(-2) @ torch.linalg.inv(lam) @ q.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    want = -0.5 * torch.logdet(lam) - 2 * m.log() - math.log(2 * math.pi ** 2)
    assert torch.allclose(acg_log_prob(q, L), want, rtol=1e-12)
    eye = torch.eye(4, dtype=torch.float64).expand(3, 4, 4)
    assert torch.allclose(acg_log_prob(q, eye), torch.full((5, 3), -math.log(2 * math.pi ** 2), dtype=torch.float64))


def test_acg_density_integrates_to_one():
    L = _tril(4, 1, 4) * torch.tensor([1.0, 0.3, 0.2, 0.1], dtype=torch.float64)[:, None]
    u = torch.randn(400000, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    u = u / u.norm(dim=-1, keepdim=True)  # uniform on S^3
    integral = acg_log_prob(u, L).exp().mean() * 2 * math.pi ** 2
    assert abs(float(integral) - 1) < 0.03


def test_acg_sample_is_normalised_direction():
    L = _tril(4, 2, 6)
    n = torch.randn(7, 2, 4, dtype=torch.float64)
    n[0, 0] = 0  # degenerate direction -> identity quaternion
    q = acg_sample(L, n)
    g = (L @ n.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(q[1:], (g / g.norm(dim=-1, keepdim=True))[1:])
    assert torch.equal(q[0, 0], torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))


def test_cholesky_or_identity():
    A = torch.stack([torch.tensor([[4.0, 2.0], [2.0, 3.0]]), torch.tensor([[1.0, 2.0], [2.0, 1.0]]),
                     torch.full((2, 2), float("nan"))]).double()
    L = cholesky_or_identity(A)
    assert torch.allclose(L[0] @ L[0].T, A[0])
    assert torch.equal(L[1], torch.eye(2, dtype=torch.float64)) and torch.equal(L[2], torch.eye(2, dtype=torch.float64))


def test_noise_shapes_and_reproducibility():
    a = draw_amis_noise(4, 8, 3, generator=torch.Generator().manual_seed(0))
    b = draw_amis_noise(4, 8, 3, generator=torch.Generator().manual_seed(0))
    assert a.normal_t.shape == (4, 8, 3, 3) and a.chi2.shape == (4, 8, 3) and a.normal_r.shape == (4, 8, 3, 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and (a.chi2 > 0).all()
