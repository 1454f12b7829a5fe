"""Proposal distributions of EPro-PnP's Monte Carlo pose loss, as pure functions of explicit noise.

- Translation: multivariate Student-t with nu = 3 degrees of freedom, location mu, scale L (lower
  triangular):  x = mu + L (n / sqrt(c / nu)),  n ~ N(0, I3),  c ~ chi2(nu)
  log p(x) = -(nu + 3)/2 log(1 + |L^-1 (x - mu)|^2 / nu) - sum log diag L - 3/2 log(nu pi)
             - lgamma(nu/2) + lgamma((nu + 3)/2)                           (pyro's MultivariateStudentT)
- Rotation: angular central Gaussian on unit quaternions with scale L (4x4 lower triangular):
  q = L n / |L n|,  n ~ N(0, I4)  (q = [1, 0, 0, 0] when |L n| < 1e-6)
  log p(q) = -2 log |L^-1 q|^2 - sum log diag L - log(2 pi^2)               (EPro-PnP's ACG)

Noise is drawn up front by `draw_amis_noise` (torch RNG, an optional generator) and consumed by
every backend, so that the reference and the fused kernels sample the same poses. chi2(3) is drawn
as the sum of three squared standard normals (exact for the integer nu used here).

`cholesky_or_identity` behaves as EPro-PnP's `cholesky_wrapper` (a factorisation that fails gives
the identity) without its CPU round trip.

References: EPro-PnP (tjiiv-cprg/EPro-PnP) `epropnp/distributions.py`, `epropnp/epropnp.py`;
pyro `pyro/distributions/multivariate_studentt.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

STUDENT_T_DF = 3
ACG_EPS = 1e-6


class AMISNoise(NamedTuple):
    """Standard-normal and chi-square noise of `num_rounds` AMIS rounds of S samples for B problems.

    normal_t: [R, S, B, 3]; chi2: [R, S, B] (chi2 with STUDENT_T_DF dof); normal_r: [R, S, B, 4].
    """

    normal_t: torch.Tensor
    chi2: torch.Tensor
    normal_r: torch.Tensor


def draw_amis_noise(num_rounds: int, samples: int, B: int, dtype=torch.float32, device=None,
                    generator=None) -> AMISNoise:
    shape = (num_rounds, samples, B)
    normal_t = torch.randn(shape + (3,), dtype=dtype, device=device, generator=generator)
    chi2 = torch.randn(shape + (STUDENT_T_DF,), dtype=dtype, device=device, generator=generator).square().sum(-1)
    normal_r = torch.randn(shape + (4,), dtype=dtype, device=device, generator=generator)
    return AMISNoise(normal_t, chi2, normal_r)


def cholesky_or_identity(A: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of A [..., D, D]; the identity where A is not positive definite."""
    L, info = torch.linalg.cholesky_ex(A)
    ok = (info == 0) & torch.isfinite(L).all(dim=(-1, -2))
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return torch.where(ok[..., None, None], L, eye)


def student_t_sample(loc, scale_tril, normal, chi2, df: float = STUDENT_T_DF):
    """loc [B, 3], scale_tril [B, 3, 3], normal [S, B, 3], chi2 [S, B] -> samples [S, B, 3]."""
    y = normal * torch.rsqrt(chi2 / df).unsqueeze(-1)
    return loc + (scale_tril @ y.unsqueeze(-1)).squeeze(-1)


def student_t_log_prob(x, loc, scale_tril, df: float = STUDENT_T_DF):
    """Log density of x [..., 3] under Student-t(loc [..., 3], scale_tril [..., 3, 3]) (broadcast)."""
    n = loc.shape[-1]
    diff = x - loc
    L = scale_tril.expand(diff.shape[:-1] + (n, n))
    y = torch.linalg.solve_triangular(L, diff.unsqueeze(-1), upper=False).squeeze(-1)
    z = (scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1) + 0.5 * n * math.log(df) + 0.5 * n * math.log(math.pi)
         + math.lgamma(0.5 * df) - math.lgamma(0.5 * (df + n)))
    return -0.5 * (df + n) * torch.log1p(y.square().sum(-1) / df) - z


def acg_sample(scale_tril, normal):
    """scale_tril [B, 4, 4], normal [S, B, 4] -> unit quaternions [S, B, 4]."""
    g = (scale_tril @ normal.unsqueeze(-1)).squeeze(-1)
    norm = g.norm(dim=-1, keepdim=True)
    ident = torch.zeros_like(g)
    ident[..., 0] = 1
    return torch.where(norm < ACG_EPS, ident, g / norm)


def acg_log_prob(q, scale_tril):
    """Log density of unit quaternions q [..., 4] under ACG(scale_tril [..., 4, 4]) (broadcast)."""
    L = scale_tril.expand(q.shape[:-1] + (4, 4))
    y = torch.linalg.solve_triangular(L, q.unsqueeze(-1), upper=False).squeeze(-1)
    M = y.square().sum(-1)
    half_log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return M.log() * -2.0 - half_log_det - math.log(2 * math.pi ** 2)
