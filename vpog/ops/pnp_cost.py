"""EPro-PnP's robust reprojection cost at many poses: `pnp_cost`, its reference and its extension path.

`pnp_cost(pose [P, B, 7], ...) -> [P, B]` evaluates the robust cost C of docs/conventions.md §6 (EPro-PnP's
`AdaptiveHuberPnPCost` with its `PerspectiveCamera`; formulas in `vpog.ops.pnp_math`) at P poses per
problem, as the Monte Carlo pose loss does for its 512 samples. The quaternion of a pose is normalised
before use (a zero quaternion means the identity). Gradients reach x3d, x2d, w2d and delta; poses carry
none (in every backend: the reference detaches them), nor does K.

The reference materialises [P, B, N, 2] tensors (for P = 512, B = 1024, N = 256 that is a 2 GB
float32 intermediate per tensor); the C++/CUDA backends stream the points through registers and
recompute the projection in the backward pass instead of storing it.

References: EPro-PnP (tjiiv-cprg/EPro-PnP) `epropnp/cost_fun.py`, `camera.py`, `common.py`.
"""

from __future__ import annotations

import torch

from vpog._backend import extension_op_exists, register_op, select_backend
from vpog.ops.pnp_math import (  # RELATIVE_DELTA, Z_MIN and adaptive_huber_delta are part of this op's API
    RELATIVE_DELTA,
    Z_MIN,
    adaptive_huber_delta,
    check_pose,
    check_problem,
    problem_cost,
)

__all__ = ["RELATIVE_DELTA", "Z_MIN", "adaptive_huber_delta", "pnp_cost", "pnp_cost_from_values",
           "pnp_cost_reference"]

_SPEC = register_op(
    "pnp_cost",
    backends=("reference", "cuda", "cpu"),
    auto={"cuda": ("cuda",), "cpu": ("cpu",)},
    extension_ops=("pnp_cost_fwd", "pnp_cost_bwd"),
)


# --------------------------------------------------------------------------------------------
# Reference


def pnp_cost_reference(pose, x3d, x2d, w2d, K, delta, z_min: float = Z_MIN):
    """PyTorch reference of `pnp_cost`: pose [P, B, 7] (or [B, 7]) -> cost [P, B] (or [B]).

    Materialises [P, B, N, 2]. Differentiable in x3d, x2d, w2d, delta (pose and K are detached).
    """
    return problem_cost(pose, x3d, x2d, w2d, K, delta, z_min)


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
    """The op's autograd (`_cost_setup_context`, `_cost_backward`) around given values."""

    @staticmethod
    def forward(ctx, cost, pose, x3d, x2d, w2d, K, delta, z_min):
        _cost_setup_context(ctx, (pose, x3d, x2d, w2d, K, delta, z_min), cost)
        return cost.clone()

    @staticmethod
    def backward(ctx, grad_cost):
        return (None, *_cost_backward(ctx, grad_cost))


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
