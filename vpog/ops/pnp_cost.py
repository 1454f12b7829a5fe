"""EPro-PnP's robust reprojection cost at many poses: `pnp_cost`, its reference and shared helpers.

Math (SPEC §6, EPro-PnP's `AdaptiveHuberPnPCost` with its `PerspectiveCamera`):

    X_n  = R(q) x3d_n + t                                       camera frame, metres
    h_n  = K X_n,  z_n = max(h_n[2], z_min),  p_n = h_n[:2] / z_n   projected pixel
    e_n  = w2d_n * (p_n - x2d_n)                                 weighted residual (2-vector)
    C    = sum_n rho(|e_n|),  rho(s) = s^2 / 2 if s <= delta else delta s - delta^2 / 2
    delta = relative_delta * mean(w2d) * sqrt(var_u(x2d) + var_v(x2d))      (unbiased variances)

The quaternion of a pose is normalised before use (a zero quaternion means the identity).

`pnp_cost(pose [P, B, 7], ...) -> [P, B]` evaluates C at P poses per problem, as the Monte Carlo
pose loss does for its 512 samples. Gradients reach x3d, x2d, w2d and delta; poses carry none
(in every backend: the reference detaches them), nor does K.

The reference materialises [P, B, N, 2] tensors (for P = 512, B = 1024, N = 256 that is a 2 GB
float32 intermediate per tensor); the C++/CUDA backends stream the points through registers and
recompute the projection in the backward pass instead of storing it.

References: EPro-PnP (tjiiv-cprg/EPro-PnP) `epropnp/cost_fun.py`, `camera.py`, `common.py`.
"""

from __future__ import annotations

import torch

from vpog._backend import extension_status, register_op, select_backend

Z_MIN = 0.01
"""Default lower clamp of the projective depth, metres (EPro-PnP-6DoF's training camera)."""

RELATIVE_DELTA = 0.5
"""Default `relative_delta` of the adaptive Huber threshold (EPro-PnP's `AdaptiveHuberPnPCost`)."""

_SPEC = register_op(
    "pnp_cost",
    backends=("reference", "cuda", "cpu"),
    auto={"cuda": ("cuda",), "cpu": ("cpu",)},
    extension_ops=("pnp_cost_fwd", "pnp_cost_bwd"),
    notes="cuda/cpu: fused cost over pose samples, backward recomputes the projection",
)


# --------------------------------------------------------------------------------------------
# Shared reference helpers (also used by pnp_solve and the Monte Carlo loss)


def adaptive_huber_delta(x2d: torch.Tensor, w2d: torch.Tensor, relative_delta: float = RELATIVE_DELTA):
    """Huber threshold of each problem: relative_delta * mean(w2d) * sqrt(sum of the x2d variances).

    x2d [B, N, 2] pixels, w2d [B, N, 2] -> delta [B] (differentiable; NaN for N < 2 as torch.var).
    """
    x2d_std = torch.var(x2d, dim=-2).sum(dim=-1).sqrt()
    return w2d.mean(dim=(-2, -1)) * x2d_std * relative_delta


def quaternion_rotation(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices of quaternions (w, x, y, z) [..., 4] -> [..., 3, 3]; q is normalised first.

    Written as EPro-PnP's `quaternion_to_rot_mat`: R = 2 (w [v]x + v v^T) + (w^2 - v.v) I.
    A zero quaternion gives the identity.
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
    """EPro-PnP's camera projection with the depth clamp.

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
    """rho(s) / 2 of EPro-PnP's Huber kernel: s^2/2 for s <= delta, else delta s - delta^2/2."""
    return torch.where(s <= delta, 0.5 * s * s, delta * s - 0.5 * delta * delta)


def pnp_cost_reference(pose, x3d, x2d, w2d, K, delta, z_min: float = Z_MIN):
    """PyTorch reference of `pnp_cost`: pose [P, B, 7] (or [B, 7]) -> cost [P, B] (or [B]).

    Materialises [P, B, N, 2]. Differentiable in x3d, x2d, w2d, delta (pose and K are detached).
    """
    uv, _, _, _ = project_points(x3d, pose.detach(), K.detach(), z_min)
    residual = (uv - x2d) * w2d
    s = residual.norm(dim=-1)
    return huber_half_rho(s, delta[..., None]).sum(dim=-1)


# --------------------------------------------------------------------------------------------
# Input checks shared with pnp_solve


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
# Extension path


def _cost_setup_context(ctx, inputs, output):
    pose, x3d, x2d, w2d, K, delta, z_min = inputs
    ctx.save_for_backward(pose, x3d, x2d, w2d, K, delta)
    ctx.z_min = z_min


def _cost_backward(ctx, grad_cost):
    pose, x3d, x2d, w2d, K, delta = ctx.saved_tensors
    grads = torch.ops.vpog.pnp_cost_bwd(grad_cost.contiguous(), pose, x3d, x2d, w2d, K, delta, ctx.z_min)
    return None, grads[0], grads[1], grads[2], None, grads[3], None


def pnp_cost_from_values(cost, pose, x3d, x2d, w2d, K, delta, z_min: float = Z_MIN):
    """Attach the extension's backward to costs already computed (e.g. inside the AMIS kernel).

    cost [P, B] must equal `pnp_cost(pose, ...)`; returns it differentiable in x3d, x2d, w2d, delta.
    """
    return _PnPCostFromValues.apply(cost, pose, x3d, x2d, w2d, K, delta, z_min)


class _PnPCostFromValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cost, pose, x3d, x2d, w2d, K, delta, z_min):
        ctx.save_for_backward(pose, x3d, x2d, w2d, K, delta)
        ctx.z_min = z_min
        return cost.clone()

    @staticmethod
    def backward(ctx, grad_cost):
        pose, x3d, x2d, w2d, K, delta = ctx.saved_tensors
        grads = torch.ops.vpog.pnp_cost_bwd(grad_cost.contiguous(), pose, x3d, x2d, w2d, K, delta, ctx.z_min)
        return (None, None, *grads[:3], None, grads[3], None)


def pnp_cost(pose, x3d, x2d, w2d, K, delta, backend: str = "auto", *, z_min: float = Z_MIN):
    """Robust reprojection cost of B PnP problems at P poses each.

    pose: [P, B, 7] (or [B, 7]) poses [tx, ty, tz, qw, qx, qy, qz], T_m2c, metres; no gradient.
    x3d: [B, N, 3] model points, object frame, metres.
    x2d: [B, N, 2] observed pixels (u, v) of the same points.
    w2d: [B, N, 2] per-coordinate weights (>= 0).
    K: [B, 3, 3] intrinsics (last row [0, 0, 1]).
    delta: [B] Huber thresholds (see `adaptive_huber_delta`).
    z_min: lower clamp of the projective depth (metres).
    All float32 or all float64 on one device. Returns cost [P, B] (or [B]) in that dtype,
    differentiable in x3d, x2d, w2d and delta (pose and K get no gradient in any backend).
    """
    B, _ = check_problem(x3d, x2d, w2d, K, delta=delta)
    check_pose("pose", pose, x3d, B, leading=True)
    choice = select_backend("pnp_cost", backend, x3d.device)
    if choice == "reference":
        return pnp_cost_reference(pose, x3d, x2d, w2d, K, delta, z_min)
    squeeze = pose.dim() == 2
    pose3 = (pose[None] if squeeze else pose).detach().contiguous()
    cost = torch.ops.vpog.pnp_cost_fwd(
        pose3, x3d.contiguous(), x2d.contiguous(), w2d.contiguous(), K.contiguous(), delta.contiguous(),
        float(z_min),
    )
    return cost[0] if squeeze else cost


def extension_op_exists(name: str) -> bool:
    """Whether the loaded extension defines `torch.ops.vpog.<name>` (whatever its kernels)."""
    if not extension_status()[0]:
        return False
    try:
        getattr(torch.ops.vpog, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _register_fake() -> None:
    if not (extension_op_exists("pnp_cost_fwd") and extension_op_exists("pnp_cost_bwd")):
        return

    @torch.library.register_fake("vpog::pnp_cost_fwd")
    def _(pose, x3d, x2d, w2d, K, delta, z_min):
        return x3d.new_empty((pose.shape[0], x3d.shape[0]))

    @torch.library.register_fake("vpog::pnp_cost_bwd")
    def _(grad_cost, pose, x3d, x2d, w2d, K, delta, z_min):
        return torch.empty_like(x3d), torch.empty_like(x2d), torch.empty_like(w2d), torch.empty_like(delta)

    # the op itself is differentiable in x3d, x2d, w2d and delta (pose and K get no gradient)
    torch.library.register_autograd("vpog::pnp_cost_fwd", _cost_backward, setup_context=_cost_setup_context)


_register_fake()
