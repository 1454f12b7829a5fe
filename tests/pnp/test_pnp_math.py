"""vpog.ops.pnp_math, the reference math shared by the PnP ops: the Gauss-Newton system is the derivative
of the weighted residual along the pose update, the IRLS weights make it the Huber system, and the
extension probe of `vpog._backend`.

Tolerance: float64 Jacobians against autograd, 1e-12 relative to the largest entry.
"""

from __future__ import annotations

import torch

from vpog._backend import extension_op_exists, extension_status
from vpog.ops.pnp_math import (
    evaluate_normal_terms,
    jtj_with_eps,
    normal_equations,
    pose_add,
    problem_cost,
    project_points,
)
from vpog.pnp.testing import random_pnp_problems

Z = 0.01


def _problems(B=3, N=9):
    return random_pnp_problems(B, N, noise=2.0, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _residual_along_step(p, step):
    """Weighted residual [B, 2N] at pose (+) step, differentiable in step."""
    uv = project_points(p.x3d, pose_add(p.pose, step), p.K, Z)[0]
    return ((uv - p.x2d) * p.w2d).reshape(p.x3d.shape[0], -1)


def test_jacobian_is_the_derivative_along_pose_add():
    """Without IRLS down-weighting (huge delta) the Jacobian is d residual(pose (+) step) / d step at 0,
    i.e. projection, rotation Jacobian and quaternion tangent map agree."""
    p = _problems()
    B = p.x3d.shape[0]
    delta = torch.full((B,), 1e9, dtype=torch.float64)
    res, jac, cost = evaluate_normal_terms(p.x3d, p.x2d, p.w2d, p.K, delta, p.pose, Z, clip_jac=False)
    zero = torch.zeros(B, 6, dtype=torch.float64)
    full = torch.autograd.functional.jacobian(lambda s: _residual_along_step(p, s), zero)  # [B, 2N, B, 6]
    expected = torch.stack([full[b, :, b] for b in range(B)])
    assert (jac - expected).abs().max() <= 1e-12 * expected.abs().max()
    assert torch.equal(res, _residual_along_step(p, zero))
    torch.testing.assert_close(cost, 0.5 * res.square().sum(-1), rtol=1e-12, atol=0)
    jtj, grad = normal_equations(res, jac)
    torch.testing.assert_close(jtj, expected.transpose(-1, -2) @ expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, (expected.transpose(-1, -2) @ res.unsqueeze(-1)).squeeze(-1), rtol=1e-10,
                               atol=0)
    off = ~torch.eye(6, dtype=torch.bool)
    assert torch.equal(jtj_with_eps(jtj)[:, off], jtj[:, off])
    assert torch.equal(jtj_with_eps(jtj).diagonal(dim1=-2, dim2=-1), jtj.diagonal(dim1=-2, dim2=-1) + 1e-5)


def test_irls_weights_give_the_huber_system():
    """With a small delta each point's residual and Jacobian are scaled by sqrt(min(delta / |e|, 1)); the
    cost is the Huber cost of `problem_cost`; clip_jac zeroes the rows of points behind z_min."""
    p = _problems()
    B, N = p.x3d.shape[:2]
    x3d = p.x3d.clone()
    x3d[0, 0] = torch.tensor([0.0, 0.0, -10.0], dtype=torch.float64)  # behind the camera
    delta = torch.full((B,), 1.5, dtype=torch.float64)
    big = torch.full((B,), 1e9, dtype=torch.float64)
    res, jac, cost = evaluate_normal_terms(x3d, p.x2d, p.w2d, p.K, delta, p.pose, Z, clip_jac=True)
    res1, jac1, _ = evaluate_normal_terms(x3d, p.x2d, p.w2d, p.K, big, p.pose, Z, clip_jac=False)
    s = res1.reshape(B, N, 2).norm(dim=-1)
    scale = (delta[:, None] / s).clamp(max=1.0).sqrt().repeat_interleave(2, dim=-1)  # [B, 2N]
    assert (scale < 1).any() and (scale == 1).any()  # both Huber branches are exercised
    torch.testing.assert_close(res, res1 * scale, rtol=1e-12, atol=0)
    clipped = torch.ones(B, 2 * N, 1, dtype=torch.float64)
    clipped[0, :2] = 0
    torch.testing.assert_close(jac, jac1 * scale[..., None] * clipped, rtol=1e-12, atol=0)
    assert (jac[0, :2] == 0).all() and (jac1[0, :2] != 0).any()
    torch.testing.assert_close(cost, problem_cost(p.pose, x3d, p.x2d, p.w2d, p.K, delta, Z), rtol=1e-12, atol=0)


def test_extension_op_exists():
    loaded = extension_status()[0]
    for name in ("pnp_solve", "pnp_cost_fwd", "pnp_cost_bwd", "pnp_amis"):
        assert extension_op_exists(name) == loaded
    assert not extension_op_exists("no_such_op")
