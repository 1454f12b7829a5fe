"""EPro-PnP's Monte Carlo pose loss with derivative regularisation, as a module (docs/conventions.md §6, §7).

For each of B problems (correspondences x3d, x2d, weights w2d, camera K, ground truth y_gt):

    L_b = C(y_gt) + logsumexp_k(-C(y_k) - log q(y_k)),       k = 1..R S AMIS samples
    L_pnp = mean_b(L_b) / norm_factor

The first term pulls the cost of the true pose down, the second pushes the costs of the sampled
poses up: a Monte Carlo estimate (up to the constant log(R S)) of the KL divergence between the
target and the predicted pose distribution exp(-C) / Z. Samples come from `vpog.ops.pnp_amis` around
the solution of `vpog.ops.pnp_solve` started from y_gt and from the random-sample init, whichever
is cheaper (EPro-PnP's `force_init_solve`). Gradients reach x3d, x2d and w2d (through C and the
adaptive Huber threshold delta) and nothing else.

`norm_factor` is a running average (momentum 0.01, updated in training mode) of the total weight
per problem, mean over problems and the two coordinates of sum_n w2d (EPro-PnP-6DoF passes the
equivalent global weight scale); the caller may pass its own value instead.

Derivative regularisation: one differentiable Gauss-Newton step at the solution y*,
y+ = y* (+) step(x3d, x2d, w2d), and
    L_t = smooth_l1(|t+ - t_gt|, beta),   L_r = 2 (1 - (q+ . q_gt)^2),   L_reg = L_t + L_r.

Problems with non-finite inputs, fewer than 4 positively weighted points, or a non-finite loss
term are left out: their loss terms are 0 and no gradient reaches their inputs (`valid` says which).

References: EPro-PnP (tjiiv-cprg/EPro-PnP) `EPro-PnP-6DoF/lib/models/monte_carlo_pose_loss.py`,
`EPro-PnP-6DoF/lib/train.py`, `epropnp/epropnp.py`, `epropnp/levenberg_marquardt.py` (gn_step).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from vpog._backend import select_backend
from vpog.ops.pnp_amis import ACG_DISPERSION, ACG_MLE_ITER, AMIS_EPS, amis
from vpog.ops.pnp_cost import pnp_cost, pnp_cost_from_values, pnp_cost_reference
from vpog.ops.pnp_distributions import draw_amis_noise
from vpog.ops.pnp_math import (
    MIN_VALID_POINTS,
    RELATIVE_DELTA,
    Z_MIN,
    adaptive_huber_delta,
    check_pose,
    check_problem,
    evaluate_normal_terms,
    jtj_with_eps,
    newton_step,
    normal_equations,
    pose_add,
)
from vpog.ops.pnp_solve import pnp_solve

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class PoseLossConfig:
    """Settings of `MonteCarloPoseLoss` (defaults: EPro-PnP-6DoF's training setup)."""

    mc_samples: int = 512
    """Monte Carlo samples in total, split evenly over the AMIS rounds."""
    num_rounds: int = 4
    """AMIS rounds (proposal refits + 1)."""
    num_iter: int = 5
    """LM iterations of the solve that centres the first proposal."""
    init_proposals: int = 4
    """Random-sample init: proposals per problem."""
    init_points: int = 16
    """Random-sample init: correspondences per proposal."""
    init_iter: int = 3
    """Random-sample init: LM iterations per proposal."""
    relative_delta: float = RELATIVE_DELTA
    """Huber threshold relative to mean(w2d) * spread(x2d)."""
    z_min: float = Z_MIN
    """Depth clamp of the projection, metres."""
    acg_mle_iter: int = ACG_MLE_ITER
    """Fixed-point iterations of the rotation proposal refit."""
    acg_dispersion: float = ACG_DISPERSION
    """Extra isotropic dispersion of the rotation proposal."""
    momentum: float = 0.01
    """Momentum of the running norm factor."""
    init_norm_factor: float = 1.0
    """Initial value of the running norm factor."""
    derivative_reg: bool = True
    """Compute the derivative regularisation L_reg (one differentiable Gauss-Newton step)."""
    reg_beta: float = 0.05
    """Smooth-L1 transition of the translation regulariser, metres."""
    backend: str = "auto"
    """Backend of the solver, sampler and costs ("auto", "reference", "cpu", "cuda")."""
    compute_dtype: str = "float64"
    """Precision of the solve, the AMIS proposals and the costs: "float64" (inputs are promoted, the
    outputs come back in the input dtype) or "input". In float32 the proposals break down once the
    pose distribution is concentrated (J^T J beyond ~1e7 x its smallest eigenvalue: weights summing
    to more than ~1e3 per problem, as VPOG's w2d = scale / b do): inverting the covariances loses
    every digit, log q turns to noise and the loss estimate runs to -1e6 and below, rewarding
    overconfidence instead of penalising it. EPro-PnP's own float32 code has the same limit; its
    normalised weights (softmax x a global scale) stay clear of it."""

    def __post_init__(self):
        for name in ("mc_samples", "num_rounds", "init_proposals", "init_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_iter", "init_iter", "acg_mle_iter"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mc_samples % self.num_rounds:
            raise ValueError(f"mc_samples ({self.mc_samples}) must be a multiple of num_rounds ({self.num_rounds})")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {self.momentum}")
        for name in ("relative_delta", "z_min", "init_norm_factor", "reg_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.compute_dtype not in ("float64", "input"):
            raise ValueError(f"compute_dtype must be 'float64' or 'input', got {self.compute_dtype!r}")


class PoseLossOutput(NamedTuple):
    """loss_mc: L_pnp (scalar); loss_t, loss_r, loss_reg: the regularisers (scalars, 0 when off);
    kl: [B] per-problem L_b before normalisation (0 where not valid); pose_opt: [B, 7] the solution;
    pose_plus: [B, 7] y* after the differentiable Gauss-Newton step (None when off);
    valid: [B] bool; norm_factor: the factor L_pnp was divided by."""

    loss_mc: torch.Tensor
    loss_t: torch.Tensor
    loss_r: torch.Tensor
    loss_reg: torch.Tensor
    kl: torch.Tensor
    pose_opt: torch.Tensor
    pose_plus: torch.Tensor | None
    valid: torch.Tensor
    norm_factor: torch.Tensor


def monte_carlo_terms(x3d, x2d, w2d, K, delta, pose_gt, samples, log_q, z_min: float = Z_MIN,
                      cost_samples=None, cost_gt=None, backend: str = "auto"):
    """C(y_gt) [B] and the log weights -C(y_k) - log q_k [M, B] of samples [M, B, 7], log_q [M, B].

    Differentiable in x3d, x2d, w2d and delta. With the extension, costs already computed without
    gradient (`cost_samples` [M, B], `cost_gt` [B]) are reused and only the backward pass runs.
    """
    poses = torch.cat((pose_gt.detach()[None], samples.detach()), dim=0)
    choice = select_backend("pnp_cost", backend, x3d.device)
    if choice == "reference":
        costs = pnp_cost_reference(poses, x3d, x2d, w2d, K, delta, z_min)
    elif cost_samples is not None and cost_gt is not None:
        values = torch.cat((cost_gt.detach()[None], cost_samples.detach()), dim=0).contiguous()
        costs = pnp_cost_from_values(values, poses.contiguous(), x3d.contiguous(), x2d.contiguous(),
                                     w2d.contiguous(), K.contiguous(), delta.contiguous(), z_min)
    else:
        costs = pnp_cost(poses, x3d, x2d, w2d, K, delta, backend=choice, z_min=z_min)
    return costs[0], -costs[1:] - log_q.detach()


def monte_carlo_kl(x3d, x2d, w2d, K, delta, pose_gt, samples, log_q, z_min: float = Z_MIN,
                   backend: str = "auto"):
    """L_b = C(y_gt) + logsumexp_k(-C(y_k) - log q_k) for given samples [M, B, 7] and log_q [M, B] -> [B]."""
    cost_gt, log_w = monte_carlo_terms(x3d, x2d, w2d, K, delta, pose_gt, samples, log_q, z_min, backend=backend)
    return cost_gt + torch.logsumexp(log_w, dim=0)


def gauss_newton_step(x3d, x2d, w2d, K, delta, pose, z_min: float = Z_MIN):
    """EPro-PnP's differentiable `gn_step` at pose [B, 7] (detached) -> step [B, 6] in (dt, dtheta)."""
    res, jac, _ = evaluate_normal_terms(x3d, x2d, w2d, K, delta, pose.detach(), z_min, clip_jac=True,
                                        differentiable=True)
    jtj, grad = normal_equations(res, jac)
    return newton_step(jtj_with_eps(jtj), grad)


def _smooth_l1(x, beta: float):
    return torch.where(x < beta, 0.5 * x.square() / beta, x - 0.5 * beta)


class MonteCarloPoseLoss(torch.nn.Module):
    """EPro-PnP's Monte Carlo pose loss and derivative regularisation (see the module docstring).

    forward(x3d [B, N, 3] model points (metres), x2d [B, N, 2] query pixels, w2d [B, N, 2] weights,
    K [B, 3, 3], pose_gt [B, 7] T_m2c [t, q], norm_factor=None, generator=None) -> PoseLossOutput.
    float32 (bfloat16/float16 inputs are promoted) or float64, one device; computed in float64 unless
    `config.compute_dtype == "input"` (see `PoseLossConfig.compute_dtype`).
    """

    def __init__(self, config: PoseLossConfig | None = None):
        super().__init__()
        self.config = config or PoseLossConfig()
        self.register_buffer("norm_factor", torch.tensor(float(self.config.init_norm_factor)))

    def forward(self, x3d, x2d, w2d, K, pose_gt, norm_factor=None, generator=None) -> PoseLossOutput:
        out_dtype = torch.float32 if x3d.dtype in (torch.float16, torch.bfloat16) else x3d.dtype
        if self.config.compute_dtype == "float64" and out_dtype != torch.float64:
            if isinstance(norm_factor, torch.Tensor):
                norm_factor = norm_factor.double()
            out = self._forward(x3d.double(), x2d.double(), w2d.double(), K, pose_gt, norm_factor, generator)
            return PoseLossOutput(*[t.to(out_dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                                    for t in out])
        return self._forward(x3d, x2d, w2d, K, pose_gt, norm_factor, generator)

    def _forward(self, x3d, x2d, w2d, K, pose_gt, norm_factor=None, generator=None) -> PoseLossOutput:
        cfg = self.config
        if x3d.dtype in (torch.float16, torch.bfloat16):
            x3d, x2d, w2d = x3d.float(), x2d.float(), w2d.float()
        K, pose_gt = K.to(x3d.dtype), pose_gt.to(x3d.dtype)
        B, N = check_problem(x3d, x2d, w2d, K)
        check_pose("pose_gt", pose_gt, x3d, B, leading=False)
        dtype, device = x3d.dtype, x3d.device
        if B == 0:  # keep the graph connected, with zero gradients
            zero = (x3d.sum() + x2d.sum() + w2d.sum()) * 0
            empty = torch.zeros_like(pose_gt)
            return PoseLossOutput(zero, zero, zero, zero, x3d.new_zeros(0), empty, None,
                                  torch.zeros(0, dtype=torch.bool, device=device), self.norm_factor.to(dtype))

        # -- problems that can be used; the others are replaced by harmless zeros
        finite = (torch.isfinite(x3d).all(dim=(1, 2)) & torch.isfinite(x2d).all(dim=(1, 2))
                  & torch.isfinite(w2d).all(dim=(1, 2)) & torch.isfinite(K).all(dim=(1, 2))
                  & torch.isfinite(pose_gt).all(dim=-1))
        ok = finite & ((w2d.detach() > 0).any(dim=-1).sum(dim=-1) >= MIN_VALID_POINTS)
        okb = ok[:, None, None]
        x3d = torch.where(okb, x3d, torch.zeros_like(x3d))
        x2d = torch.where(okb, x2d, torch.zeros_like(x2d))
        w2d = torch.where(okb, w2d, torch.zeros_like(w2d))
        K = torch.where(okb, K, torch.eye(3, dtype=dtype, device=device).expand(B, 3, 3))
        ident = torch.zeros_like(pose_gt)
        ident[:, 3] = 1
        pose_gt = torch.where(ok[:, None], pose_gt.detach(), ident)
        pose_gt = torch.cat((pose_gt[:, :3], F.normalize(pose_gt[:, 3:], dim=-1)), dim=-1)
        delta = adaptive_huber_delta(x2d, w2d, cfg.relative_delta) if N > 1 else x3d.new_zeros(B)
        delta = torch.where(ok, delta, torch.zeros_like(delta))

        # -- solve, sample, weigh
        sol = pnp_solve(x3d, x2d, w2d, K, pose_gt, cfg.num_iter, backend=cfg.backend, delta=delta.detach(),
                        init_proposals=cfg.init_proposals, init_points=cfg.init_points, init_iter=cfg.init_iter,
                        force_init_solve=True, z_min=cfg.z_min, generator=generator)
        noise = draw_amis_noise(cfg.num_rounds, cfg.mc_samples // cfg.num_rounds, B, dtype, device, generator)
        smp = amis(x3d, x2d, w2d, K, delta, sol.pose, sol.jtj, noise, cfg.z_min, cfg.acg_mle_iter,
                   cfg.acg_dispersion, AMIS_EPS, backend=cfg.backend)
        cost_gt, log_w = monte_carlo_terms(x3d, x2d, w2d, K, delta, pose_gt, smp.samples, smp.log_q, cfg.z_min,
                                           cost_samples=smp.cost, cost_gt=sol.cost_init, backend=cfg.backend)
        ok = ok & torch.isfinite(cost_gt.detach()) & torch.isfinite(log_w.detach()).all(dim=0)
        # where() keeps the non-finite values of left-out problems out of the value and the gradient
        log_w = torch.where(ok[None], log_w, torch.zeros_like(log_w))
        cost_gt = torch.where(ok, cost_gt, torch.zeros_like(cost_gt))
        kl = torch.where(ok, cost_gt + torch.logsumexp(log_w, dim=0), torch.zeros_like(cost_gt))

        # -- running norm factor
        if norm_factor is None:
            total = torch.where(ok, w2d.detach().sum(dim=1).mean(dim=-1), torch.zeros_like(delta)).sum()
            count = ok.sum()
            norm_factor = torch.where(count > 0, total / count.clamp(min=1), self.norm_factor.to(dtype))
        if self.training:
            with torch.no_grad():
                self.norm_factor.mul_(1 - cfg.momentum).add_(cfg.momentum * norm_factor.to(self.norm_factor.dtype))
        nf = self.norm_factor.to(dtype)
        loss_mc = kl.sum() / max(B, 1) / nf

        # -- derivative regularisation
        zero = x3d.new_zeros(())
        loss_t = loss_r = zero
        pose_plus = None
        if cfg.derivative_reg and B > 0:
            step = gauss_newton_step(x3d, x2d, w2d, K, delta, sol.pose, cfg.z_min)
            pose_plus = pose_add(sol.pose.detach(), step)
            t_err = (pose_plus[:, :3] - pose_gt[:, :3]).norm(dim=-1)
            dot = (pose_plus[:, 3:] * pose_gt[:, 3:]).sum(-1)
            okf = ok.to(dtype)
            loss_t = (torch.where(ok, _smooth_l1(t_err, cfg.reg_beta), zero) * okf).sum() / B
            loss_r = (torch.where(ok, 2 * (1 - dot.square()), zero) * okf).sum() / B
        return PoseLossOutput(loss_mc, loss_t, loss_r, loss_t + loss_r, kl, sol.pose, pose_plus, ok, nf)
