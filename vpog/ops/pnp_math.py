"""Reference math of the EPro-PnP ops, one batched PyTorch function per routine of `csrc/pnp_math.h`.

The three PnP ops (`vpog.ops.pnp_cost`, `vpog.ops.pnp_solve`, `vpog.ops.pnp_amis`) and the Monte Carlo
pose loss (`vpog.pnp.loss`) take their math from here and from nowhere else. Each function names its
C++ twin (`csrc/pnp_math.h` unless said otherwise); the C++ works on one problem or one point at a
time, these functions on batches. Math: docs/conventions.md §6, i.e. EPro-PnP's
`AdaptiveHuberPnPCost` with its `PerspectiveCamera`, and its `LMSolver`:

    X_n  = R(q) x3d_n + t                                       camera frame, metres
    h_n  = K X_n,  z_n = max(h_n[2], z_min),  p_n = h_n[:2] / z_n   projected pixel
    e_n  = w2d_n * (p_n - x2d_n)                                 weighted residual (2-vector)
    C    = sum_n rho(|e_n|),  rho(s) = s^2 / 2 if s <= delta else delta s - delta^2 / 2
    delta = relative_delta * mean(w2d) * sqrt(var_u(x2d) + var_v(x2d))      (unbiased variances)
    pose (+) step = [t + dt, normalize(q + T(q) dtheta)]        T: EPro-PnP's quaternion tangent map

Poses are [..., 7] = [tx, ty, tz, qw, qx, qy, qz] (T_m2c, metres); steps are [..., 6] = (dt, dtheta).

References: EPro-PnP (tjiiv-cprg/EPro-PnP) `epropnp/levenberg_marquardt.py`, `camera.py`, `cost_fun.py`,
`common.py`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

Z_MIN = 0.01
"""Default lower clamp of the projective depth, metres (EPro-PnP-6DoF's training camera)."""

RELATIVE_DELTA = 0.5
"""Default `relative_delta` of the adaptive Huber threshold (EPro-PnP's `AdaptiveHuberPnPCost`)."""

# EPro-PnP's LMSolver constants (C++: kMinLmDiagonal, kMaxLmDiagonal, kMinRelativeDecrease,
# kInitialRadius, kMaxRadius, kLmEps, kIrlsEps, kCenterEps, kMinValidPoints).
MIN_LM_DIAGONAL = 1e-6
MAX_LM_DIAGONAL = 1e32
MIN_RELATIVE_DECREASE = 1e-3
INITIAL_TRUST_REGION_RADIUS = 30.0
MAX_TRUST_REGION_RADIUS = 1e16
LM_EPS = 1e-5
IRLS_EPS = 1e-10
CENTER_EPS = 1e-6
MIN_VALID_POINTS = 4


# --------------------------------------------------------------------------------------------
# Input checks (C++: check_problem_tensors and check_pose_tensor, declared in csrc/pnp.h)


def check_problem(x3d, x2d, w2d, K, *, delta=None) -> tuple[int, int]:
    """Validate the correspondence tensors of B PnP problems; returns (B, N). Raises ValueError."""
    tensors = {"x3d": x3d, "x2d": x2d, "w2d": w2d, "K": K}
    if delta is not None:
        tensors["delta"] = delta
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x3d.dim() != 3 or x3d.shape[-1] != 3:
        raise ValueError(f"x3d must have shape [B, N, 3], got {tuple(x3d.shape)}")
    B, N = x3d.shape[:2]
    for name, t, shape in (("x2d", x2d, (B, N, 2)), ("w2d", w2d, (B, N, 2)), ("K", K, (B, 3, 3))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape [B, N, ...] = {list(shape)}, got {tuple(t.shape)}")
    if delta is not None and tuple(delta.shape) != (B,):
        raise ValueError(f"delta must have shape [B] = [{B}], got {tuple(delta.shape)}")
    dtype = x3d.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"x3d must be float32 or float64, got {dtype}")
    for name, t in tensors.items():
        if t.dtype != dtype:
            raise ValueError(f"{name} must have dtype {dtype} like x3d, got {t.dtype}")
        if t.device != x3d.device:
            raise ValueError(f"{name} must be on {x3d.device} like x3d, got {t.device}")
    return B, N


def check_pose(name: str, pose: torch.Tensor, x3d: torch.Tensor, B: int, leading: bool) -> None:
    """Validate poses of B problems: [B, 7], or with `leading` also [P, B, 7]; x3d's dtype and device."""
    if not isinstance(pose, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(pose).__name__}")
    ok = pose.shape[-1:] == (7,) and (
        (pose.dim() == 3 and pose.shape[1] == B) if leading else (pose.dim() == 2 and pose.shape[0] == B)
    )
    if leading and pose.dim() == 2 and pose.shape == (B, 7):
        ok = True
    if not ok:
        want = "[P, B, 7] or [B, 7]" if leading else "[B, 7]"
        raise ValueError(f"{name} must have shape {want} with B = {B}, got {tuple(pose.shape)}")
    if pose.dtype != x3d.dtype:
        raise ValueError(f"{name} must have dtype {x3d.dtype} like x3d, got {pose.dtype}")
    if pose.device != x3d.device:
        raise ValueError(f"{name} must be on {x3d.device} like x3d, got {pose.device}")


# --------------------------------------------------------------------------------------------
# Camera, pose and robust cost


def adaptive_huber_delta(x2d: torch.Tensor, w2d: torch.Tensor, relative_delta: float = RELATIVE_DELTA):
    """Huber threshold of each problem: relative_delta * mean(w2d) * sqrt(sum of the x2d variances).

    x2d [B, N, 2] pixels, w2d [B, N, 2] -> delta [B] (differentiable; NaN for N < 2 as torch.var).
    No C++ twin: delta is an input of every extension op.
    """
    x2d_std = torch.var(x2d, dim=-2).sum(dim=-1).sqrt()
    return w2d.mean(dim=(-2, -1)) * x2d_std * relative_delta


def quaternion_rotation(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of quaternions (w, x, y, z) [..., 4] -> [..., 3, 3]; q is normalised first.

    C++: normalize_quat + make_rigid. Written as EPro-PnP's `quaternion_to_rot_mat`:
    R = 2 (w [v]x + v v^T) + (w^2 - v.v) I. A zero quaternion gives the identity.
    """
    norm = q.norm(dim=-1, keepdim=True)
    ident = torch.zeros_like(q)
    ident[..., 0] = 1
    q = torch.where(norm > 0, q / norm.clamp_min(torch.finfo(q.dtype).tiny), ident)
    w, x, y, z = q.unbind(-1)
    ww = w * w - (x * x + y * y + z * z)
    rows = (
        ww + 2 * x * x, 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), ww + 2 * y * y, 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), ww + 2 * z * z,
    )
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def project_points(x3d: torch.Tensor, pose: torch.Tensor, K: torch.Tensor, z_min: float = Z_MIN):
    """EPro-PnP's camera projection with the depth clamp (C++: project).

    x3d [..., N, 3] model frame; pose [..., 7]; K [..., 3, 3] (last row [0, 0, 1]).
    Returns (uv [..., N, 2] pixels, x_rot = R x3d [..., N, 3], z clamped [..., N, 1],
    clamped [..., N] bool: z_raw <= z_min, where EPro-PnP zeroes the Jacobian).
    """
    R = quaternion_rotation(pose[..., 3:])
    x_rot = x3d @ R.transpose(-1, -2)
    xh = (x_rot + pose[..., None, :3]) @ K.transpose(-1, -2)
    z_raw = xh[..., 2:3]
    z = z_raw.clamp(min=z_min)
    return xh[..., :2] / z, x_rot, z, (z_raw <= z_min).squeeze(-1)


def huber_half_rho(s: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """rho(s) / 2 of EPro-PnP's Huber kernel: s^2/2 for s <= delta, else delta s - delta^2/2 (C++: huber_half_rho)."""
    return torch.where(s <= delta, 0.5 * s * s, delta * s - 0.5 * delta * delta)


def problem_cost(pose, x3d, x2d, w2d, K, delta, z_min: float = Z_MIN):
    """Robust cost C at pose [..., B, 7] -> [..., B] (C++: point_cost summed over the points, as problem_cost
    of csrc/pnp_solver.h). Materialises [..., B, N, 2]; differentiable in x3d, x2d, w2d, delta (pose and K
    are detached)."""
    uv, _, _, _ = project_points(x3d, pose.detach(), K.detach(), z_min)
    residual = (uv - x2d) * w2d
    s = residual.norm(dim=-1)
    return huber_half_rho(s, delta[..., None]).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# Normal equations and the pose update


def evaluate_normal_terms(x3d, x2d, w2d, K, delta, pose, z_min: float, clip_jac: bool,
                          differentiable: bool = False):
    """IRLS-weighted residual [B, 2N], Jacobian [B, 2N, 6] in (dt, dtheta) and cost [B] at pose [B, 7].

    C++: accumulate_point (which sums J^T J, J^T r and the cost at once). The residual and Jacobian of
    point n are scaled by sqrt(min(delta / |e_n|, 1)), so that J^T J and J^T r are the Gauss-Newton
    system of the Huber cost; d X_cam / d dtheta = [2 R x3d]x. `clip_jac` zeroes the Jacobian of points
    whose depth is clamped (EPro-PnP's `clip_jac`). `differentiable` uses EPro-PnP's autograd form of the
    IRLS weight, min(sqrt(max(delta, eps)) / sqrt(max(|e|, eps)), 1) (the same value for delta >= eps).
    """
    B, N = x3d.shape[:2]
    uv, x_rot, z, clamped = project_points(x3d, pose, K, z_min)
    zz = z.unsqueeze(-1)  # [B, N, 1, 1]
    j_xy = K[:, None, :2, :2] / zz
    j_z = (K[:, None, :2, 2:3] - uv.unsqueeze(-1)) / zz
    j_t = torch.cat((j_xy, j_z), dim=-1)  # [B, N, 2, 3]
    a = (2 * x_rot).unsqueeze(-2)  # [B, N, 1, 3]; J_rot = J_t [a]x, written out (no tiny batched matmuls)
    j0, j1, j2 = j_t.unbind(-1)
    a0, a1, a2 = a.unbind(-1)
    j_r = torch.stack((j1 * a2 - j2 * a1, j2 * a0 - j0 * a2, j0 * a1 - j1 * a0), dim=-1)
    jac = torch.cat((j_t, j_r), dim=-1)  # [B, N, 2, 6]
    if clip_jac:
        jac = jac.masked_fill(clamped[..., None, None], 0)
    residual = (uv - x2d) * w2d
    s = residual.norm(dim=-1)
    d = delta[:, None]
    cost = huber_half_rho(s, d).sum(dim=-1)
    if differentiable:
        rho_d_sqrt = (d.clamp(min=IRLS_EPS).sqrt() * s.clamp(min=IRLS_EPS).rsqrt()).clamp(max=1.0)
    else:
        rho_d_sqrt = (d / s.clamp(min=IRLS_EPS)).clamp(max=1.0).sqrt()
    residual = residual * rho_d_sqrt[..., None]
    jac = jac * (w2d * rho_d_sqrt[..., None])[..., None]
    return residual.reshape(B, 2 * N), jac.reshape(B, 2 * N, 6), cost


def normal_equations(res: torch.Tensor, jac: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """J^T J [B, 6, 6] and J^T r [B, 6] of res [B, 2N] and jac [B, 2N, 6] (C++: the kJtj and kGrad sums)."""
    jt = jac.transpose(-1, -2)
    return jt @ jac, (jt @ res.unsqueeze(-1)).squeeze(-1)


def jtj_with_eps(jtj: torch.Tensor) -> torch.Tensor:
    """J^T J + 1e-5 I [..., 6, 6] (C++: jtj_with_eps); its inverse is EPro-PnP's pose covariance."""
    return jtj + LM_EPS * torch.eye(6, dtype=jtj.dtype, device=jtj.device)


def spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A^-1 b for SPD A [B, 6, 6], b [B, 6] by Cholesky; zero where A cannot be factorised
    (C++: cholesky + cholesky_solve)."""
    L, info = torch.linalg.cholesky_ex(A)
    ok = (info == 0) & torch.isfinite(L).all(dim=(-1, -2))
    L = torch.where(ok[:, None, None], L, torch.eye(6, dtype=A.dtype, device=A.device))
    x = torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)
    return torch.where(ok[:, None], x, torch.zeros_like(x))


def newton_step(A: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """step = -A^-1 grad [B, 6] of the (damped) normal equations A [B, 6, 6] (C++: newton_step)."""
    return -spd_solve(A, grad)


def quaternion_tangent(q: torch.Tensor) -> torch.Tensor:
    """EPro-PnP's 4x3 map T(q) from a rotation step dtheta to a quaternion increment. q [..., 4] -> [..., 4, 3].

    C++: quaternion_tangent (used by pose_add, and by initial_proposal of csrc/pnp_amis.h).
    """
    w, i, j, k = q.unbind(-1)
    rows = (i, j, k, -w, -k, j, k, -w, -i, -j, i, -w)
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (4, 3))


def pose_add(pose: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """pose [..., 7] (+) step [..., 6] = [t + dt, normalize(q + T(q) dtheta)] (C++: pose_add)."""
    q = pose[..., 3:]
    q_new = q + (quaternion_tangent(q) @ step[..., 3:, None]).squeeze(-1)
    return torch.cat((pose[..., :3] + step[..., :3], F.normalize(q_new, dim=-1)), dim=-1)


# --------------------------------------------------------------------------------------------
# Levenberg-Marquardt


def lm_solve(x3d, x2d, w2d, K, delta, pose, num_iter: int, fast_mode: bool, z_min: float):
    """EPro-PnP's LMSolver.solve of B problems from pose [B, 7] -> (pose, cost [B], jtj + eps I [B, 6, 6]).

    C++: lm_solve. `num_iter` LM (or, with `fast_mode`, Gauss-Newton) iterations; the rules (damping,
    step acceptance, trust region, which evaluation the outputs come from) are those of the module
    docstring of `vpog.ops.pnp_solve`.
    """
    pose = pose.clone()
    if fast_mode:
        res, jac, cost = evaluate_normal_terms(x3d, x2d, w2d, K, delta, pose, z_min, clip_jac=False)
        for i in range(num_iter):
            if i > 0:
                res, jac, cost = evaluate_normal_terms(x3d, x2d, w2d, K, delta, pose, z_min, clip_jac=False)
            jtj, grad = normal_equations(res, jac)
            pose = pose_add(pose, newton_step(jtj_with_eps(jtj), grad))
        return pose, cost, jtj_with_eps(normal_equations(res, jac)[0])

    res, jac, cost = evaluate_normal_terms(x3d, x2d, w2d, K, delta, pose, z_min, clip_jac=True)
    radius = x3d.new_full((x3d.shape[0],), INITIAL_TRUST_REGION_RADIUS)
    decrease = x3d.new_full((x3d.shape[0],), 2.0)
    success = torch.zeros(x3d.shape[0], dtype=torch.bool, device=x3d.device)
    res_new, jac_new, cost_new = res, jac, cost
    for _ in range(num_iter):
        res = torch.where(success[:, None], res_new, res)
        jac = torch.where(success[:, None, None], jac_new, jac)
        cost = torch.where(success, cost_new, cost)
        jtj, grad = normal_equations(res, jac)
        diag = torch.diagonal(jtj, dim1=-2, dim2=-1)
        damp = diag.clamp(min=MIN_LM_DIAGONAL, max=MAX_LM_DIAGONAL) / radius[:, None] + LM_EPS
        step = newton_step(jtj + torch.diag_embed(damp), grad)
        pose_new = pose_add(pose, step)
        res_new, jac_new, cost_new = evaluate_normal_terms(x3d, x2d, w2d, K, delta, pose_new, z_min, True)
        model_change = -(step * ((jtj @ step.unsqueeze(-1)).squeeze(-1) / 2 + grad)).sum(-1)
        rel = (cost - cost_new) / model_change
        success = (rel >= MIN_RELATIVE_DECREASE) & (model_change > 0)
        pose = torch.where(success[:, None], pose_new, pose)
        shrink = (1.0 - (2.0 * rel - 1.0) ** 3).clamp(min=1.0 / 3.0)
        radius = torch.where(success, radius / shrink, radius).clamp(min=LM_EPS, max=MAX_TRUST_REGION_RADIUS)
        decrease = torch.where(success, torch.full_like(decrease, 2.0), decrease)
        radius = torch.where(success, radius, radius / decrease)
        decrease = torch.where(success, decrease, decrease * 2.0)
    res = torch.where(success[:, None], res_new, res)
    jac = torch.where(success[:, None, None], jac_new, jac)
    cost = torch.where(success, cost_new, cost)
    return pose, cost, jtj_with_eps(normal_equations(res, jac)[0])


# --------------------------------------------------------------------------------------------
# Start poses


def identity_pose(B: int, dtype, device) -> torch.Tensor:
    """B identity poses [0, 0, 0, 1, 0, 0, 0] -> [B, 7] (C++: identity_pose)."""
    pose = torch.zeros((B, 7), dtype=dtype, device=device)
    pose[:, 3] = 1
    return pose


def normalized_pose(pose: torch.Tensor) -> torch.Tensor:
    """pose [B, 7] with its quaternion normalised, a zero quaternion giving the identity (C++: normalized_pose)."""
    q = F.normalize(pose[:, 3:], dim=-1)
    q = torch.where((q == 0).all(-1, keepdim=True), identity_pose(1, pose.dtype, pose.device)[:, 3:], q)
    return torch.cat((pose[:, :3], q), dim=-1)


def center_based_translation(x3d, x2d, K, eps: float = CENTER_EPS):
    """EPro-PnP's translation guess from the spread of x2d (normalised camera) and x3d. -> [B, 3].

    C++: center_translation of csrc/pnp_solver.h, with normalized_pixel and inverse3.
    """
    x2dh = F.pad(x2d, [0, 1], mode="constant", value=1.0)
    x2dc = torch.linalg.solve_ex(K, x2dh.transpose(-1, -2))[0].transpose(-1, -2)  # no error (or sync) if singular
    x2dc = x2dc[..., :2] / x2dc[..., 2:].clamp(min=eps)
    n = x2d.shape[-2]

    def std(x):  # unbiased, as torch.std, written out: NaN without a warning when n = 1
        mean = x.mean(dim=-2)
        return ((x - mean.unsqueeze(-2)).square().sum(dim=-2) / (n - 1)).sqrt(), mean

    x2dc_std, x2dc_mean = std(x2dc)
    x3d_std = std(x3d)[0]
    scale = math.sqrt(2 / 3) * x3d_std.norm(dim=-1) / x2dc_std.norm(dim=-1).clamp(min=eps)
    return F.pad(x2dc_mean, [0, 1], mode="constant", value=1.0) * scale[:, None]
