"""Batched PnP solver of EPro-PnP: Levenberg-Marquardt (or Gauss-Newton) with random-sample init.

Math (docs/conventions.md §6; EPro-PnP's `LMSolver` and `RSLMSolver` with `AdaptiveHuberPnPCost`):

- Local parametrisation: a step (dt [3], dtheta [3]) maps pose [t, q] to
  [t + dt, normalize(q + T(q) dtheta)] with T(q) the 4x3 matrix of EPro-PnP's
  `get_quaternion_transfrom_mat`; d X_cam / d dtheta = [2 R x3d]x (a skew matrix).
- IRLS: residual e_n and Jacobian J_n of point n are scaled by sqrt(min(delta / |e_n|, 1)), so that
  J^T J and J^T e are the Gauss-Newton system of the Huber cost. The Jacobian of a point whose
  projective depth is clamped at z_min is zero (LM mode only, as EPro-PnP's `clip_jac`).
- LM: jtj_lm = J^T J + diag(clamp(diag(J^T J), 1e-6, 1e32) / radius + 1e-5),
  step = -jtj_lm^-1 J^T e; accepted when the model decrease m = -step.(J^T J step / 2 + J^T e) > 0 and
  (C - C_new) / m >= 1e-3; accepted: radius /= max(1 - (2 rho - 1)^3, 1/3), radius clamped to
  [1e-5, 1e16], decrease factor reset to 2; rejected: radius /= factor, factor *= 2. Initial radius 30.
  A fixed number of iterations.
- Fast mode: plain Gauss-Newton, step = -(J^T J + 1e-5 I)^-1 J^T e, no Jacobian clipping. As in
  EPro-PnP, the returned cost and jtj are those of the last evaluation, i.e. at the pose before the
  last step.
- Random-sample init (pose_init=None): translation from the centres and spreads of x2d and x3d;
  `init_proposals` random quaternions each refined by `init_iter` LM (or GN) iterations on
  `init_points` correspondences drawn with probability proportional to mean(w2d); the proposal with the
  lowest cost on all points wins. With `force_init_solve`, pose_init is kept where its cost is lower.
- Outputs: pose, the cost there, jtj = J^T J + 1e-5 I (so that jtj^-1 is EPro-PnP's pose covariance)
  and a validity flag.

The 6x6 systems are solved by Cholesky (EPro-PnP uses LU; the same to rounding on these positive
definite systems); a system that cannot be factorised gives a zero step.

Degenerate problems: a problem with a NaN/inf in x3d, x2d, w2d, K, delta or pose_init is not solved:
its pose is the identity [0, 0, 0, 1, 0, 0, 0], its cost 0 and its jtj 1e-5 I. `valid` is False
unless the inputs are finite, at least 4 points with a positive weight lie in front of the camera
(z > z_min) at the returned pose, and pose, cost and jtj are finite.

References: EPro-PnP (tjiiv-cprg/EPro-PnP) `epropnp/levenberg_marquardt.py`, `camera.py`,
`cost_fun.py`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vpog._backend import extension_op_exists, register_op, select_backend
from vpog.ops.pnp_math import (
    LM_EPS,
    MIN_VALID_POINTS,
    RELATIVE_DELTA,
    Z_MIN,
    adaptive_huber_delta,
    center_based_translation,
    check_pose,
    check_problem,
    identity_pose,
    jtj_with_eps,
    lm_solve,
    normalized_pose,
    problem_cost,
    project_points,
)

_SPEC = register_op(
    "pnp_solve",
    backends=("reference", "cuda", "cpu"),
    auto={"cuda": ("cuda",), "cpu": ("cpu",)},
    extension_ops=("pnp_solve",),
)


class PnPResult(NamedTuple):
    """Output of `pnp_solve` (B problems).

    pose: [B, 7] [tx, ty, tz, qw, qx, qy, qz], T_m2c, metres, unit quaternion.
    cost: [B] robust cost (see `pnp_cost`) at `pose` (fast mode: at the last evaluated pose).
    jtj: [B, 6, 6] J^T J + 1e-5 I in (dt, dtheta) at `pose`; its inverse is EPro-PnP's covariance.
    valid: [B] bool, see the module docstring.
    cost_init: [B] cost at pose_init (zeros when pose_init is None).
    """

    pose: torch.Tensor
    cost: torch.Tensor
    jtj: torch.Tensor
    valid: torch.Tensor
    cost_init: torch.Tensor


# --------------------------------------------------------------------------------------------
# Reference


def draw_random_init(w2d, num_proposals: int, num_points: int, generator=None):
    """Random draws of the random-sample init, shared by every backend.

    w2d [B, N, 2] -> (index [P, B, k] int64 drawn without replacement with probability ~ mean(w2d),
    k = min(num_points, N); quat [P, B, 4] unit quaternions, uniform on the sphere).
    Problems with fewer than k positive weights (or non-finite ones) draw from a weight floor so
    that sampling without replacement stays defined (all-zero weights: uniform).
    """
    B, N = w2d.shape[:2]
    k = min(num_points, N)
    with torch.no_grad():
        mean_w = torch.nan_to_num(w2d.mean(dim=-1), nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0)
        npos = (mean_w > 0).sum(dim=-1, keepdim=True)
        peak = mean_w.amax(dim=-1, keepdim=True)
        floor = torch.where(peak > 0, peak * 1e-6, torch.ones_like(peak))
        mean_w = torch.where(npos < k, mean_w + floor, mean_w)
        # sampling without replacement as the k largest w / E, E ~ Exp(1) (what torch.multinomial does,
        # without its host-side validity check: no device synchronisation)
        keys = torch.empty((num_proposals, B, N), dtype=mean_w.dtype, device=mean_w.device)
        keys = mean_w / keys.exponential_(generator=generator)
        index = torch.topk(keys, k, dim=-1).indices
        quat = torch.randn((num_proposals, B, 4), dtype=w2d.dtype, device=w2d.device, generator=generator)
        q_norm = quat.norm(dim=-1, keepdim=True)
        ident = torch.zeros_like(quat)
        ident[..., 0] = 1
        quat = torch.where(q_norm < LM_EPS, ident, quat / q_norm)
    return index, quat


def _random_init_reference(x3d, x2d, w2d, K, delta, index, quat, init_iter, fast_mode, z_min):
    """EPro-PnP's RSLMSolver.solve with given draws -> (pose [B, 7], cost [B]) (C++: rs_proposal)."""
    P, B, k = index.shape
    index = index.clamp(0, x3d.shape[1] - 1)  # as the extension: never read outside the problem
    t0 = center_based_translation(x3d, x2d, K)
    pose0 = torch.cat((t0.unsqueeze(0).expand(P, B, 3), quat), dim=-1).reshape(P * B, 7)
    bidx = torch.arange(B, device=x3d.device)[None, :, None]

    def gather(x):
        return x[bidx, index].reshape(P * B, k, x.shape[-1])

    poses, _, _ = lm_solve(
        gather(x3d), gather(x2d), gather(w2d), K.repeat(P, 1, 1), delta.repeat(P), pose0,
        init_iter, fast_mode, z_min,
    )
    poses = poses.reshape(P, B, 7)
    cost = problem_cost(poses, x3d, x2d, w2d, K, delta, z_min)
    min_cost, best = cost.min(dim=0)
    return poses[best, torch.arange(B, device=x3d.device)], min_cost


def _input_bad(x3d, x2d, w2d, K, delta, pose_init) -> torch.Tensor:
    """[B] bool: a NaN or inf in the problem's inputs (C++: problem_bad)."""
    bad = ~(torch.isfinite(x3d).all(dim=(1, 2)) & torch.isfinite(x2d).all(dim=(1, 2))
            & torch.isfinite(w2d).all(dim=(1, 2)) & torch.isfinite(K).all(dim=(1, 2)) & torch.isfinite(delta))
    if pose_init is not None:
        bad = bad | ~torch.isfinite(pose_init).all(dim=-1)
    return bad


def _unsolved(B: int, like: torch.Tensor) -> PnPResult:
    """The result of B problems that are not solved (non-finite input, no points): identity pose, cost 0,
    jtj 1e-5 I, not valid (C++: the problem_bad branch of solve_problem)."""
    return PnPResult(identity_pose(B, like.dtype, like.device), like.new_zeros(B),
                     jtj_with_eps(like.new_zeros((B, 6, 6))), torch.zeros(B, dtype=torch.bool, device=like.device),
                     like.new_zeros(B))


def solution_valid(x3d, w2d, K, pose, cost, jtj, z_min: float) -> torch.Tensor:
    """At least 4 positively weighted points in front of the camera, finite outputs. -> [B] bool."""
    _, _, _, clamped = project_points(x3d, pose, K, z_min)
    weighted = (w2d > 0).any(dim=-1)
    count = (weighted & ~clamped).sum(dim=-1)
    finite = torch.isfinite(pose).all(-1) & torch.isfinite(cost) & torch.isfinite(jtj).all(dim=(-1, -2))
    return (count >= MIN_VALID_POINTS) & finite


def pnp_solve_reference(x3d, x2d, w2d, K, delta, pose_init=None, num_iter=10, fast_mode=False,
                        init_index=None, init_quat=None, init_iter=3, force_init_solve=False,
                        z_min=Z_MIN) -> PnPResult:
    """PyTorch reference of `pnp_solve` with explicit delta and random-init draws (see `draw_random_init`)."""
    with torch.no_grad():
        B = x3d.shape[0]
        x3d, x2d, w2d, K, delta = (t.detach() for t in (x3d, x2d, w2d, K, delta))
        bad = _input_bad(x3d, x2d, w2d, K, delta, pose_init)
        zero = lambda t: torch.where(bad.reshape((B,) + (1,) * (t.dim() - 1)), torch.zeros_like(t), t)
        x3d, x2d, w2d, delta = (zero(t) for t in (x3d, x2d, w2d, delta))
        K = torch.where(bad[:, None, None], torch.eye(3, dtype=K.dtype, device=K.device), K)
        unsolved = _unsolved(B, x3d)
        cost_init = torch.zeros_like(delta)
        if pose_init is not None:
            pose_init = normalized_pose(torch.where(bad[:, None], unsolved.pose, pose_init.detach()))
            cost_init = problem_cost(pose_init, x3d, x2d, w2d, K, delta, z_min)
        if pose_init is None or force_init_solve:
            if init_index is None or init_quat is None:
                raise ValueError("init_index and init_quat are required without pose_init or with force_init_solve")
            pose, rs_cost = _random_init_reference(
                x3d, x2d, w2d, K, delta, init_index, init_quat, init_iter, fast_mode, z_min)
            if pose_init is not None:
                pose = torch.where((cost_init < rs_cost)[:, None], pose_init, pose)
        else:
            pose = pose_init
        pose, cost, jtj = lm_solve(x3d, x2d, w2d, K, delta, pose, num_iter, fast_mode, z_min)
        pose = torch.where(bad[:, None], unsolved.pose, pose)
        cost = torch.where(bad, unsolved.cost, cost)
        cost_init = torch.where(bad, unsolved.cost_init, cost_init)
        jtj = torch.where(bad[:, None, None], unsolved.jtj, jtj)
        valid = ~bad & solution_valid(x3d, w2d, K, pose, cost, jtj, z_min)
        return PnPResult(pose, cost, jtj, valid, cost_init)


# --------------------------------------------------------------------------------------------
# Dispatcher


def pnp_solve(x3d, x2d, w2d, K, pose_init=None, num_iter: int = 10, fast_mode: bool = False,
              backend: str = "auto", *, delta=None, relative_delta: float = RELATIVE_DELTA,
              init_proposals: int = 64, init_points: int = 16, init_iter: int = 3,
              force_init_solve: bool = False, z_min: float = Z_MIN, generator=None) -> PnPResult:
    """Solve B weighted PnP problems with EPro-PnP's LM solver (see the module docstring).

    x3d: [B, N, 3] model points, object frame, metres.
    x2d: [B, N, 2] pixels (u, v) of their observations.
    w2d: [B, N, 2] per-coordinate weights (>= 0).
    K: [B, 3, 3] intrinsics (last row [0, 0, 1]).
    pose_init: [B, 7] [tx, ty, tz, qw, qx, qy, qz] starting poses, or None for the random-sample init.
    num_iter: LM (or, with fast_mode, Gauss-Newton) iterations.
    delta: [B] Huber thresholds; by default `adaptive_huber_delta(x2d, w2d, relative_delta)`.
    init_proposals, init_points, init_iter: random-sample init (EPro-PnP's RSLMSolver defaults).
    force_init_solve: run the random-sample init even with pose_init and keep the better start.
    z_min: depth clamp, metres. generator: torch.Generator of the random draws.
    All tensors float32 or float64 on one device. No gradients (see `vpog.pnp` for the loss).
    """
    B, N = check_problem(x3d, x2d, w2d, K)
    if pose_init is not None:
        check_pose("pose_init", pose_init, x3d, B, leading=False)
    if delta is None:
        with torch.no_grad():
            delta = adaptive_huber_delta(x2d, w2d, relative_delta) if N > 1 and B > 0 else x3d.new_zeros(B)
    check_problem(x3d, x2d, w2d, K, delta=delta)
    for name, value, low in (("num_iter", num_iter, 0), ("init_iter", init_iter, 0),
                             ("init_proposals", init_proposals, 1), ("init_points", init_points, 1)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    choice = select_backend("pnp_solve", backend, x3d.device)
    index = quat = None
    if (pose_init is None or force_init_solve) and N > 0 and B > 0:
        index, quat = draw_random_init(w2d.detach(), init_proposals, init_points, generator)
    if N == 0 or B == 0:
        return _unsolved(B, x3d)
    if choice == "reference":
        return pnp_solve_reference(x3d, x2d, w2d, K, delta, pose_init, num_iter, fast_mode, index, quat,
                                   init_iter, force_init_solve, z_min)
    with torch.no_grad():
        out = torch.ops.vpog.pnp_solve(
            x3d.detach().contiguous(), x2d.detach().contiguous(), w2d.detach().contiguous(),
            K.detach().contiguous(), delta.detach().contiguous(),
            None if pose_init is None else pose_init.detach().contiguous(),
            index, quat, int(num_iter), int(init_iter), bool(fast_mode), bool(force_init_solve), float(z_min),
        )
    return PnPResult(*out)


def _register_fake() -> None:
    if not extension_op_exists("pnp_solve"):
        return

    @torch.library.register_fake("vpog::pnp_solve")
    def _(x3d, x2d, w2d, K, delta, pose_init, init_index, init_quat, num_iter, init_iter, fast_mode,
          force_init_solve, z_min):
        B = x3d.shape[0]
        return (x3d.new_empty((B, 7)), x3d.new_empty((B,)), x3d.new_empty((B, 6, 6)),
                x3d.new_empty((B,), dtype=torch.bool), x3d.new_empty((B,)))


_register_fake()
