"""vpog.ops.pnp_solve: fast paths against the reference, convergence, OpenCV, degenerate input, errors.

Tolerances (relative to the largest magnitude of the compared tensor):
    float64: 1e-7 pose, cost and J^T J after up to 10 LM iterations (issue bound: 1e-5)
    float32: 1e-3 pose, 1e-3 cost, 2e-3 J^T J (mild initialisations, so that no LM step flips
             between accepted and rejected on rounding)
"""

from __future__ import annotations

import math

import pytest
import torch

from vpog._backend import OPS
from vpog.geometry import quaternion_to_matrix, rotation_angle_deg
from vpog.ops.pnp_cost import adaptive_huber_delta, pnp_cost_reference
from vpog.ops.pnp_solve import draw_random_init, pnp_solve, pnp_solve_reference
from vpog.pnp.testing import assert_same_solution, perturb_poses, random_pnp_problems

TOL = {torch.float64: (1e-7, 1e-7, 1e-7), torch.float32: (1e-3, 1e-3, 2e-3)}


def _has(backend, device="cpu"):
    return OPS["pnp_solve"].unavailable_reason(backend, torch.device(device)) is None


needs_cpu_ext = pytest.mark.skipif(not _has("cpu"), reason="vpog._C (C++ CPU kernels) not built")


def _problem(B, N, dtype, device="cpu", noise=2.0, seed=0, angle=30.0):
    g = torch.Generator().manual_seed(seed)
    p = random_pnp_problems(B, N, noise=noise, dtype=dtype, generator=g)
    init = perturb_poses(p.pose, 0.03, angle, generator=g)
    return [t.to(device) for t in (p.x3d, p.x2d, p.w2d, p.K, p.pose, init)]


def _compare(backend, device, dtype, mode, fast_mode, num_iter, B=5, N=23):
    x3d, x2d, w2d, K, gt, init = _problem(B, N, dtype, device, angle=30.0 if dtype == torch.float64 else 10.0)
    delta = adaptive_huber_delta(x2d, w2d)
    index, quat = draw_random_init(w2d, 16, 8, torch.Generator(device=device).manual_seed(1))
    pose_init = None if mode == "random" else init
    force = mode == "force"
    ref = pnp_solve_reference(x3d, x2d, w2d, K, delta, pose_init, num_iter, fast_mode, index, quat, 3, force)
    out = torch.ops.vpog.pnp_solve(x3d, x2d, w2d, K, delta, pose_init, index, quat, num_iter, 3, fast_mode, force,
                                   0.01)
    assert_same_solution(type(ref)(*out), ref, TOL[dtype])


@needs_cpu_ext
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["given", "random", "force"])
@pytest.mark.parametrize("fast_mode", [False, True])
def test_cpu_matches_reference(dtype, mode, fast_mode):
    _compare("cpu", "cpu", dtype, mode, fast_mode, num_iter=10)


@needs_cpu_ext
@pytest.mark.parametrize("num_iter", [0, 1, 2, 4])
def test_cpu_iterates_match_reference(num_iter):
    _compare("cpu", "cpu", torch.float64, "given", False, num_iter)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode", ["given", "random", "force"])
@pytest.mark.parametrize("fast_mode", [False, True])
def test_cuda_matches_reference(dtype, mode, fast_mode):
    _compare("cuda", "cuda", dtype, mode, fast_mode, num_iter=10, B=37, N=75)


@pytest.mark.cuda
@pytest.mark.parametrize("num_iter", [0, 1, 2, 4])
def test_cuda_iterates_match_reference(num_iter):
    _compare("cuda", "cuda", torch.float64, "given", False, num_iter, B=9, N=300)


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_ext)])
@pytest.mark.parametrize("angle", [60.0, 120.0])
def test_noiseless_solved_to_machine_precision(backend, angle):
    x3d, x2d, w2d, K, gt, _ = _problem(6, 20, torch.float64, noise=0.0, seed=3)
    init = perturb_poses(gt, 0.1, angle, generator=torch.Generator().manual_seed(4))
    out = pnp_solve(x3d, x2d, w2d, K, init, num_iter=30, backend=backend)
    q = torch.where(out.pose[:, 3:4] < 0, -out.pose[:, 3:], out.pose[:, 3:])
    assert (out.pose[:, :3] - gt[:, :3]).abs().max() < 1e-12
    assert (q - gt[:, 3:]).abs().max() < 1e-12
    assert out.valid.all() and (out.cost < 1e-20).all()


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_ext)])
def test_noiseless_random_init_and_gauss_newton(backend):
    x3d, x2d, w2d, K, gt, init = _problem(4, 16, torch.float64, noise=0.0, seed=5, angle=10.0)
    g = torch.Generator().manual_seed(6)
    for out in (pnp_solve(x3d, x2d, w2d, K, None, 20, backend=backend, generator=g),
                pnp_solve(x3d, x2d, w2d, K, init, 10, fast_mode=True, backend=backend)):
        q = torch.where(out.pose[:, 3:4] < 0, -out.pose[:, 3:], out.pose[:, 3:])
        assert (out.pose[:, :3] - gt[:, :3]).abs().max() < 1e-12
        assert (q - gt[:, 3:]).abs().max() < 1e-12


@needs_cpu_ext
def test_same_pose_as_opencv_iterative():
    cv2 = pytest.importorskip("cv2")
    x3d, x2d, w2d, K, gt, init = _problem(6, 40, torch.float64, noise=1.0, seed=7)
    w2d = torch.ones_like(w2d)  # equal weights: residuals << delta, i.e. plain least squares
    out = pnp_solve(x3d, x2d, w2d, K, init, num_iter=20, backend="cpu")
    for b in range(6):
        ok, rvec, tvec = cv2.solvePnP(x3d[b].numpy(), x2d[b].numpy(), K[b].numpy(), None,
                                      flags=cv2.SOLVEPNP_ITERATIVE)
        assert ok
        R_cv = torch.from_numpy(cv2.Rodrigues(rvec)[0])
        R = quaternion_to_matrix(out.pose[b, 3:])
        assert rotation_angle_deg(R_cv, R) < 1e-3
        assert (torch.from_numpy(tvec[:, 0]) - out.pose[b, :3]).abs().max() < 1e-5
        # ours is a least-squares minimum at least as good as OpenCV's
        X = x3d[b] @ R.T + out.pose[b, :3]
        ours = ((X[:, :2] / X[:, 2:] * 600 + 112 - x2d[b]) ** 2).sum()
        X = x3d[b] @ R_cv.T + torch.from_numpy(tvec[:, 0])
        theirs = ((X[:, :2] / X[:, 2:] * 600 + 112 - x2d[b]) ** 2).sum()
        assert ours <= theirs * (1 + 1e-9)


def _degenerate_batch(dtype=torch.float64):
    x3d, x2d, w2d, K, gt, init = _problem(6, 12, dtype, seed=8, angle=5.0)
    w2d[1] = 0  # all weights zero
    w2d[2, 3:] = 0  # 3 weighted points
    x3d[3, :, 2] -= 5.0  # everything behind the camera
    x2d[4, 5, 0] = float("nan")
    K[5, 0, 0] = float("inf")
    return x3d, x2d, w2d, K, gt, init


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_ext)])
@pytest.mark.parametrize("random_init", [False, True])
def test_degenerate_problems_defined_and_flagged(backend, random_init):
    x3d, x2d, w2d, K, gt, init = _degenerate_batch()
    g = torch.Generator().manual_seed(9)
    out = pnp_solve(x3d, x2d, w2d, K, None if random_init else init, 10, backend=backend, generator=g)
    for t in (out.pose, out.cost, out.jtj, out.cost_init):
        assert torch.isfinite(t).all()
    # problem 3: all points behind the camera at pose_init, where the clipped Jacobian is zero and LM
    # cannot move; shifted model points are no obstacle to the random-sample init, which solves it
    assert out.valid.tolist() == [True, False, False, random_init, False, False]
    ident = torch.tensor([0, 0, 0, 1, 0, 0, 0], dtype=torch.float64)
    for b in (4, 5):  # non-finite input: not solved
        assert torch.equal(out.pose[b], ident) and out.cost[b] == 0
        assert torch.equal(out.jtj[b], 1e-5 * torch.eye(6, dtype=torch.float64))
    if not random_init:
        assert torch.allclose(out.pose[1], init[1]) and out.cost[1] == 0  # zero weights: nothing moves
    # the good problem is unaffected by its neighbours
    alone = pnp_solve(x3d[:1], x2d[:1], w2d[:1], K[:1], None if random_init else init[:1], 10, backend=backend,
                      generator=torch.Generator().manual_seed(9))
    if not random_init:
        assert torch.allclose(alone.pose, out.pose[:1], rtol=0, atol=1e-12)
    else:  # different random draws: both must still converge to the same solution
        assert bool(alone.valid[0])
        qa, qb = alone.pose[0, 3:], out.pose[0, 3:]
        same_q = torch.minimum((qa - qb).abs().max(), (qa + qb).abs().max())  # q and -q are one rotation
        assert (alone.pose[0, :3] - out.pose[0, :3]).abs().max() < 1e-6 and same_q < 1e-6


@needs_cpu_ext
@pytest.mark.parametrize("random_init", [False, True])
def test_degenerate_cpu_matches_reference(random_init):
    x3d, x2d, w2d, K, gt, init = _degenerate_batch()
    delta = adaptive_huber_delta(x2d, w2d)
    index, quat = draw_random_init(w2d, 8, 4, torch.Generator().manual_seed(2))
    pose_init = None if random_init else init
    ref = pnp_solve_reference(x3d, x2d, w2d, K, delta, pose_init, 10, False, index, quat, 3, False)
    out = torch.ops.vpog.pnp_solve(x3d, x2d, w2d, K, delta, pose_init, index, quat, 10, 3, False, False, 0.01)
    assert_same_solution(type(ref)(*out), ref, TOL[torch.float64])


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_cpu_ext)])
def test_tiny_and_empty_problems(backend):
    x3d, x2d, w2d, K, gt, init = _problem(3, 3, torch.float64, seed=10)
    out = pnp_solve(x3d, x2d, w2d, K, None, 5, backend=backend)  # N = 3 < 4: defined, invalid
    assert not out.valid.any() and torch.isfinite(out.pose).all()
    out = pnp_solve(x3d[:, :0], x2d[:, :0], w2d[:, :0], K, init, 5, backend=backend)
    assert out.pose.shape == (3, 7) and not out.valid.any()
    out = pnp_solve(x3d[:0], x2d[:0], w2d[:0], K[:0], None, 5, backend=backend)
    assert out.pose.shape == (0, 7) and out.jtj.shape == (0, 6, 6)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_bad_arguments_raise_value_error(backend):
    x3d, x2d, w2d, K, gt, init = _problem(2, 8, torch.float32)
    with pytest.raises(ValueError, match="x3d"):
        pnp_solve(x3d[0], x2d, w2d, K, init, backend=backend)
    with pytest.raises(ValueError, match="x2d"):
        pnp_solve(x3d, x2d[:, :, :1], w2d, K, init, backend=backend)
    with pytest.raises(ValueError, match="K"):
        pnp_solve(x3d, x2d, w2d, K[:1], init, backend=backend)
    with pytest.raises(ValueError, match="pose_init"):
        pnp_solve(x3d, x2d, w2d, K, init[:, :4], backend=backend)
    with pytest.raises(ValueError, match="pose_init"):
        pnp_solve(x3d, x2d, w2d, K, init.double(), backend=backend)
    with pytest.raises(ValueError, match="w2d"):
        pnp_solve(x3d, x2d, w2d.int(), K, init, backend=backend)
    with pytest.raises(ValueError, match="num_iter"):
        pnp_solve(x3d, x2d, w2d, K, init, num_iter=-1, backend=backend)
    with pytest.raises(ValueError, match="x2d must be on"):
        pnp_solve(x3d, x2d.to("meta"), w2d, K, init, backend=backend)
    with pytest.raises(ValueError, match="backend"):
        pnp_solve(x3d, x2d, w2d, K, init, backend="tpu")


@needs_cpu_ext
def test_cpp_op_checks_and_opcheck():
    x3d, x2d, w2d, K, gt, init = _problem(3, 10, torch.float32)
    delta = adaptive_huber_delta(x2d, w2d)
    with pytest.raises(ValueError, match="init_index"):
        torch.ops.vpog.pnp_solve(x3d, x2d, w2d, K, delta, None, None, None, 5, 3, False, False, 0.01)
    index, quat = draw_random_init(w2d, 4, 5)
    with pytest.raises(ValueError, match="init_quat"):
        torch.ops.vpog.pnp_solve(x3d, x2d, w2d, K, delta, None, index, quat[:, :1], 5, 3, False, False, 0.01)
    # out-of-range indices are clamped, never read outside the problem
    out = torch.ops.vpog.pnp_solve(x3d, x2d, w2d, K, delta, None, index + 1000, quat, 5, 3, False, False, 0.01)
    assert torch.isfinite(out[0]).all()
    torch.library.opcheck(torch.ops.vpog.pnp_solve.default,
                          (x3d, x2d, w2d, K, delta, init, index, quat, 5, 3, False, True, 0.01))


def test_random_init_draws():
    w2d = torch.zeros(3, 10, 2, dtype=torch.float64)
    w2d[0] = 1
    w2d[1, :2] = 1  # fewer positive weights than points to draw
    index, quat = draw_random_init(w2d, 5, 4, torch.Generator().manual_seed(0))
    assert index.shape == (5, 3, 4) and quat.shape == (5, 3, 4)
    assert torch.allclose(quat.norm(dim=-1), torch.ones(5, 3, dtype=torch.float64))
    for p in range(5):
        for b in range(3):
            assert len(set(index[p, b].tolist())) == 4  # without replacement
        assert {0, 1} <= set(index[p, 1].tolist())  # the weighted points are (almost surely) drawn


def test_reference_cost_init_is_cost_of_pose_init():
    x3d, x2d, w2d, K, gt, init = _problem(3, 15, torch.float64, seed=11)
    out = pnp_solve(x3d, x2d, w2d, K, init, 3, backend="reference")
    delta = adaptive_huber_delta(x2d, w2d)
    assert torch.allclose(out.cost_init, pnp_cost_reference(init, x3d, x2d, w2d, K, delta), rtol=1e-12)
    assert (out.cost <= out.cost_init).all()  # LM never accepts a worse pose
    assert math.isfinite(float(out.cost.sum()))
