"""Adaptive multiple importance sampling (AMIS) of poses around a PnP solution, as EPro-PnP-6DoF.

Given the solver's pose y* and J^T J (+ 1e-5 I) at y*, for each of B problems:

1. Initial proposal: Student-t(nu = 3) translation with location t*, scale chol(Sigma_tt) where
   Sigma = (J^T J)^-1; ACG rotation with covariance Lambda = (T Sigma_rr^-1 T^T + I4)^-1 / trace,
   T = EPro-PnP's quaternion tangent map at q*, scale chol(Lambda + det(Lambda)^(1/4) d I4),
   d = acg_dispersion. A factorisation that fails gives the identity.
2. Round i = 0..R-1: draw S poses from proposal i; evaluate their costs C; evaluate every sample of
   rounds 0..i under every proposal 0..i; mixture log density
   log q = logsumexp_j log p_j - log(i + 1); log weight = -C - log q.
3. Between rounds: refit the proposal to all samples so far with softmax(log weights): weighted mean
   and covariance of t (Cholesky), and `acg_mle_iter` fixed-point steps of the ACG maximum
   likelihood for the rotation, Lambda = sum_k (w_k / M_k) q_k q_k^T / sum_k (w_k / M_k) + eps I,
   M_k = q_k^T Lambda^-1 q_k (clamped at eps), followed by the same dispersion as in step 1.

Outputs the R S samples, their costs (no gradient: the loss re-attaches it) and the final mixture
log density log q. Nothing here carries gradients; samples and proposals are constants of the loss.

The reference below runs this in PyTorch with batched small-matrix routines (no CPU Cholesky, no
numpy, no host synchronisation). The C++/CUDA op `vpog::pnp_amis` runs all R rounds of one problem
in one CUDA block (threads over samples, point tiles in shared memory).

References: EPro-PnP (tjiiv-cprg/EPro-PnP) `epropnp/epropnp.py` (EProPnP6DoF), `distributions.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from vpog._backend import extension_op_exists, register_op, select_backend
from vpog.ops.pnp_distributions import (
    AMISNoise,
    acg_log_prob,
    acg_sample,
    cholesky_or_identity,
    student_t_log_prob,
    student_t_sample,
)
from vpog.ops.pnp_math import problem_cost, quaternion_tangent

ACG_MLE_ITER = 3
ACG_DISPERSION = 1e-3
AMIS_EPS = 1e-5

_SPEC = register_op(
    "pnp_amis",
    backends=("reference", "cuda", "cpu"),
    auto={"cuda": ("cuda",), "cpu": ("cpu",)},
    extension_ops=("pnp_amis",),
)


class AMISResult(NamedTuple):
    """samples [R*S, B, 7] poses; cost [R*S, B] their costs (detached); log_q [R*S, B] mixture log density."""

    samples: torch.Tensor
    cost: torch.Tensor
    log_q: torch.Tensor


class Proposal(NamedTuple):
    """One AMIS proposal for B problems: t_loc [B, 3], t_tril [B, 3, 3], r_tril [B, 4, 4]."""

    t_loc: torch.Tensor
    t_tril: torch.Tensor
    r_tril: torch.Tensor


def _dispersed_tril(rot_cov: torch.Tensor, dispersion: float) -> torch.Tensor:
    eye = torch.eye(4, dtype=rot_cov.dtype, device=rot_cov.device)
    det = torch.linalg.det(rot_cov)
    return cholesky_or_identity(rot_cov + det[:, None, None] ** 0.25 * (dispersion * eye))


def initial_proposal(pose_opt, jtj, acg_dispersion: float = ACG_DISPERSION) -> Proposal:
    """EPro-PnP's `initial_fit` from the solution pose_opt [B, 7] and jtj [B, 6, 6] (J^T J + eps I).

    C++: initial_proposal (csrc/pnp_amis.h)."""
    pose_cov = torch.linalg.inv_ex(jtj)[0]
    t_tril = cholesky_or_identity(pose_cov[:, :3, :3])
    eye = torch.eye(4, dtype=jtj.dtype, device=jtj.device)
    T = quaternion_tangent(pose_opt[:, 3:])
    inv_rr = torch.linalg.inv_ex(pose_cov[:, 3:, 3:])[0]
    rot_cov = torch.linalg.inv_ex(T @ inv_rr @ T.transpose(-1, -2) + eye)[0]
    rot_cov = rot_cov / rot_cov.diagonal(dim1=-1, dim2=-2).sum(-1)[:, None, None]
    return Proposal(pose_opt[:, :3], t_tril, _dispersed_tril(rot_cov, acg_dispersion))


def refit_proposal(samples, log_weights, acg_mle_iter: int = ACG_MLE_ITER,
                   acg_dispersion: float = ACG_DISPERSION, eps: float = AMIS_EPS) -> Proposal:
    """EPro-PnP's `estimate_params`: samples [M, B, 7], log_weights [M, B] -> the next proposal.

    C++: refit_moments + proposal_from_moments (csrc/pnp_amis.h)."""
    w = torch.softmax(log_weights, dim=0)
    t = samples[..., :3]
    t_loc = (w[..., None] * t).sum(dim=0)
    dev = t - t_loc
    t_cov = (w[..., None, None] * dev.unsqueeze(-1) * dev.unsqueeze(-2)).sum(dim=0)
    t_tril = cholesky_or_identity(t_cov)
    eye = torch.eye(4, dtype=samples.dtype, device=samples.device)
    q = samples[..., 3:]
    qqt = q.unsqueeze(-1) * q.unsqueeze(-2)
    rot_cov = eye.expand(samples.shape[1], 4, 4)
    for _ in range(acg_mle_iter):
        inv = torch.linalg.inv_ex(rot_cov)[0]
        M = (q.unsqueeze(-2) @ inv @ q.unsqueeze(-1)).squeeze(-1).squeeze(-1)
        a = w / M.clamp(min=eps)
        a = a / a.sum(dim=0)
        rot_cov = (a[..., None, None] * qqt).sum(dim=0) + eye * eps
    return Proposal(t_loc, t_tril, _dispersed_tril(rot_cov, acg_dispersion))


def proposal_log_prob(prop: Proposal, samples) -> torch.Tensor:
    """Log density of samples [..., B, 7] under the proposal (broadcast over leading dims)."""
    return (student_t_log_prob(samples[..., :3], prop.t_loc, prop.t_tril)
            + acg_log_prob(samples[..., 3:], prop.r_tril))


MAX_FAST_ROUNDS = 8  # csrc/pnp_amis.h kMaxRounds


def amis_reference(x3d, x2d, w2d, K, delta, pose_opt, jtj, noise: AMISNoise, z_min: float,
                   acg_mle_iter: int = ACG_MLE_ITER, acg_dispersion: float = ACG_DISPERSION,
                   eps: float = AMIS_EPS) -> AMISResult:
    """PyTorch reference of the AMIS sampler (see the module docstring)."""
    with torch.no_grad():
        x3d, x2d, w2d, delta = x3d.detach(), x2d.detach(), w2d.detach(), delta.detach()
        R, S, B = noise.chi2.shape
        props = [initial_proposal(pose_opt, jtj, acg_dispersion)]
        samples, costs = [], []
        # logp[j][r]: [S, B] log density of the samples of round r under proposal j
        logp = [[None] * R for _ in range(R)]
        log_q = None
        for i in range(R):
            p = props[i]
            t = student_t_sample(p.t_loc, p.t_tril, noise.normal_t[i], noise.chi2[i])
            q = acg_sample(p.r_tril, noise.normal_r[i])
            samples.append(torch.cat((t, q), dim=-1))
            costs.append(problem_cost(samples[i], x3d, x2d, w2d, K, delta, z_min))
            for r in range(i + 1):
                logp[i][r] = proposal_log_prob(p, samples[r])
            for j in range(i):
                logp[j][i] = proposal_log_prob(props[j], samples[i])
            stacked = torch.stack([torch.stack([logp[j][r] for r in range(i + 1)]) for j in range(i + 1)])
            log_q = torch.logsumexp(stacked, dim=0) - math.log(i + 1)  # [i + 1, S, B]
            if i == R - 1:
                break
            log_w = -torch.stack(costs) - log_q
            props.append(refit_proposal(torch.cat(samples), log_w.reshape(-1, B), acg_mle_iter,
                                        acg_dispersion, eps))
        return AMISResult(torch.cat(samples), torch.cat(costs), log_q.reshape(R * S, B))


def amis(x3d, x2d, w2d, K, delta, pose_opt, jtj, noise: AMISNoise, z_min: float,
         acg_mle_iter: int = ACG_MLE_ITER, acg_dispersion: float = ACG_DISPERSION, eps: float = AMIS_EPS,
         backend: str = "auto") -> AMISResult:
    """AMIS sampler of B problems (shapes as `vpog.ops.pnp_solve`; pose_opt [B, 7], jtj [B, 6, 6]).

    noise: `draw_amis_noise(R, S, B)` in x3d's dtype and device. Returns AMISResult (no gradients).
    """
    R, S, B = noise.chi2.shape
    if R > MAX_FAST_ROUNDS and backend in ("cpu", "cuda"):
        raise ValueError(f"backend '{backend}' of the AMIS sampler supports at most {MAX_FAST_ROUNDS} rounds, "
                         f"got {R}; use backend='reference' or 'auto'")
    # The extension keeps every round's proposal on chip: more rounds than that run on the reference.
    choice = "reference" if R > MAX_FAST_ROUNDS else select_backend("pnp_amis", backend, x3d.device)
    if B == 0:
        return AMISResult(x3d.new_zeros((R * S, 0, 7)), x3d.new_zeros((R * S, 0)), x3d.new_zeros((R * S, 0)))
    if choice == "reference":
        return amis_reference(x3d, x2d, w2d, K, delta, pose_opt, jtj, noise, z_min, acg_mle_iter,
                              acg_dispersion, eps)
    with torch.no_grad():
        out = torch.ops.vpog.pnp_amis(
            x3d.detach().contiguous(), x2d.detach().contiguous(), w2d.detach().contiguous(),
            K.detach().contiguous(), delta.detach().contiguous(), pose_opt.detach().contiguous(),
            jtj.detach().contiguous(), noise.normal_t.contiguous(), noise.chi2.contiguous(),
            noise.normal_r.contiguous(), float(z_min), int(acg_mle_iter), float(acg_dispersion), float(eps),
        )
    return AMISResult(*out)


def _register_fake() -> None:
    if not extension_op_exists("pnp_amis"):
        return

    @torch.library.register_fake("vpog::pnp_amis")
    def _(x3d, x2d, w2d, K, delta, pose_opt, jtj, normal_t, chi2, normal_r, z_min, acg_mle_iter,
          acg_dispersion, eps):
        R, S, B = chi2.shape
        return (x3d.new_empty((R * S, B, 7)), x3d.new_empty((R * S, B)), x3d.new_empty((R * S, B)))


_register_fake()
