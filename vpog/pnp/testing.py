"""Random PnP problems for tests and benchmarks (one setup factory, docs/conventions.md §1 conventions).

An object of `size` metres (points uniform in a cube) at 0.5-1 m in front of a 224x224 crop camera
(f = 600 px), a uniformly random rotation, pixel noise `noise` (px, Gaussian) and weights in
[0.1, 0.6) per coordinate (or all ones with `equal_weights`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vpog.geometry import quaternion_to_matrix


class PnPProblems(NamedTuple):
    """x3d [B, N, 3] metres, x2d [B, N, 2] px, w2d [B, N, 2], K [B, 3, 3], pose [B, 7] the true T_m2c."""

    x3d: torch.Tensor
    x2d: torch.Tensor
    w2d: torch.Tensor
    K: torch.Tensor
    pose: torch.Tensor


def random_pnp_problems(B: int, N: int, noise: float = 1.0, dtype=torch.float64, device=None,
                        generator: torch.Generator | None = None, size: float = 0.2,
                        equal_weights: bool = False) -> PnPProblems:
    def rand(*shape):
        return torch.rand(shape, dtype=dtype, generator=generator).to(device)

    def randn(*shape):
        return torch.randn(shape, dtype=dtype, generator=generator).to(device)

    x3d = (rand(B, N, 3) - 0.5) * size
    q = randn(B, 4)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    t = torch.stack((0.05 * randn(B), 0.05 * randn(B), 0.5 + 0.5 * rand(B)), dim=-1)
    K = torch.tensor([[600.0, 0.0, 112.0], [0.0, 600.0, 112.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    K = K.expand(B, 3, 3).clone()
    X = x3d @ quaternion_to_matrix(q).transpose(-1, -2) + t[:, None]
    uv = X[..., :2] / X[..., 2:] * 600.0 + 112.0
    x2d = uv + noise * randn(B, N, 2)
    w2d = torch.ones_like(x2d) if equal_weights else rand(B, N, 2) * 0.5 + 0.1
    return PnPProblems(x3d, x2d, w2d, K, torch.cat((t, q), dim=-1))


def perturb_poses(pose: torch.Tensor, t_sigma: float, angle_deg: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Poses [B, 7] moved by N(0, t_sigma^2) metres and rotated by `angle_deg` about random axes."""
    B = pose.shape[0]
    dtype, device = pose.dtype, pose.device
    axis = torch.randn((B, 3), dtype=dtype, generator=generator).to(device)
    axis = axis / axis.norm(dim=-1, keepdim=True)
    half = torch.tensor(angle_deg * torch.pi / 360.0, dtype=dtype, device=device)
    dq = torch.cat((half.cos().expand(B, 1), half.sin() * axis), dim=-1)
    w1, v1 = dq[:, :1], dq[:, 1:]
    w2, v2 = pose[:, 3:4], pose[:, 4:]
    q = torch.cat((w1 * w2 - (v1 * v2).sum(-1, keepdim=True), w1 * v2 + w2 * v1 + torch.cross(v1, v2, dim=-1)), -1)
    t = pose[:, :3] + t_sigma * torch.randn((B, 3), dtype=dtype, generator=generator).to(device)
    return torch.cat((t, q), dim=-1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| of a result a against its reference b, computed in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_same_solution(out, ref, tol: tuple[float, float, float]) -> None:
    """Assert that two `pnp_solve` results (PnPResult) agree: pose, cost and jtj within the relative errors
    tol = (pose, cost, jtj), the same `valid` flags, and cost_init within the cost tolerance (all zeros
    where the reference has no pose_init cost)."""
    for name, t in zip(("pose", "cost", "jtj"), tol):
        err = relative_error(getattr(out, name), getattr(ref, name))
        assert err < t, f"{name}: relative error {err} >= {t}"
    assert torch.equal(out.valid, ref.valid), (out.valid, ref.valid)
    if ref.cost_init.abs().max() > 0:
        assert relative_error(out.cost_init, ref.cost_init) < tol[1]
    else:
        assert (out.cost_init == 0).all()


def random_amis_inputs(B: int, N: int, dtype=torch.float64, device="cpu", rounds: int = 4, samples: int = 32,
                       seed: int = 0) -> tuple:
    """Positional arguments of `vpog.ops.pnp_amis.amis` up to `noise` for B random problems (noise 2 px):
    (x3d, x2d, w2d, K, delta, pose_opt, jtj, noise), pose_opt and jtj from a 10-iteration reference
    solve started at the true pose, AMIS noise for `rounds` x `samples`. All on `device`."""
    from vpog.ops.pnp_distributions import draw_amis_noise
    from vpog.ops.pnp_math import adaptive_huber_delta
    from vpog.ops.pnp_solve import pnp_solve

    g = torch.Generator().manual_seed(seed)
    p = random_pnp_problems(B, N, noise=2.0, dtype=dtype, generator=g)
    x3d, x2d, w2d, K, gt = (t.to(device) for t in p)
    delta = adaptive_huber_delta(x2d, w2d)
    sol = pnp_solve(x3d, x2d, w2d, K, gt, 10, backend="reference")
    noise = draw_amis_noise(rounds, samples, B, dtype, generator=g)
    noise = type(noise)(*(t.to(device) for t in noise))
    return x3d, x2d, w2d, K, delta, sol.pose, sol.jtj, noise
