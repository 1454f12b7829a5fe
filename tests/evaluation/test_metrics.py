"""Pose metrics (docs/conventions.md §8) on cases whose answer is computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vpog.evaluation.metrics import (
    add_error,
    adds_error,
    average_recall,
    axis_angle_matrix,
    is_symmetric,
    mspd_error,
    mspd_thresholds,
    mssd_error,
    mssd_thresholds,
    recall,
    rotation_error_deg,
    rotation_error_sym_deg,
    symmetry_transforms,
    translation_error_mm,
    view_angle_deg,
)

F64 = torch.float64


def _pose(R=None, t=(0.0, 0.0, 0.0)) -> torch.Tensor:
    T = torch.eye(4, dtype=F64)
    if R is not None:
        T[:3, :3] = R
    T[:3, 3] = torch.tensor(t, dtype=F64)
    return T


def _rz(deg: float) -> torch.Tensor:
    return axis_angle_matrix(torch.tensor([0.0, 0.0, 1.0]), torch.tensor(math.radians(deg), dtype=F64))


def _ring(radius=0.05, n=8, centre=(0.0, 0.0, 0.0)) -> torch.Tensor:
    a = torch.arange(n, dtype=F64) * (2 * math.pi / n)
    pts = torch.stack([radius * torch.cos(a), radius * torch.sin(a), torch.zeros(n, dtype=F64)], -1)
    return pts + torch.tensor(centre, dtype=F64)


CYLINDER = {"diameter": 100.0, "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}
BOX_Z2 = {"diameter": 100.0, "symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]}


def test_rotation_and_translation_errors():
    R_gt = torch.eye(3, dtype=F64)[None].repeat(3, 1, 1)
    R_est = torch.stack([_rz(30.0), _rz(-170.0), torch.eye(3, dtype=F64)])
    assert rotation_error_deg(R_est, R_gt).tolist() == pytest.approx([30.0, 170.0, 0.0], abs=1e-9)
    t_gt = torch.zeros(2, 3, dtype=F64)
    t_est = torch.tensor([[0.003, 0.004, 0.0], [0.0, 0.0, -0.012]], dtype=F64)
    assert translation_error_mm(t_est, t_gt).tolist() == pytest.approx([5.0, 12.0], abs=1e-9)


def test_add_and_adds_on_a_two_point_object():
    # Two points on the x axis: a 180-degree turn about z swaps them, so ADD = 0.2 m and ADD-S = 0.
    pts = torch.tensor([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0]], dtype=F64)
    T_gt = _pose(t=(0.0, 0.0, 1.0))[None]
    T_flip = _pose(_rz(180.0), (0.0, 0.0, 1.0))[None]
    assert add_error(T_flip, T_gt, pts).item() == pytest.approx(0.2, abs=1e-12)
    assert adds_error(T_flip, T_gt, pts).item() == pytest.approx(0.0, abs=1e-12)
    # A pure shift of (3, 4, 0) mm moves every point by 5 mm: ADD = 5 mm, ADD-S = min(5 mm, other point).
    T_shift = _pose(t=(0.003, 0.004, 1.0))[None]
    assert add_error(T_shift, T_gt, pts).item() == pytest.approx(0.005, abs=1e-12)
    assert adds_error(T_shift, T_gt, pts).item() == pytest.approx(0.005, abs=1e-12)


def test_adds_averages_over_ground_truth_points():
    # Points at x = 0, 10, 100 mm; the estimate is shifted by +90 mm along x. Averaging over the
    # ground-truth points (the definition): 90, 80, 0 mm -> 56.67 mm. The other direction would give
    # 10, 0, 90 mm -> 33.33 mm.
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.1, 0.0, 0.0]], dtype=F64)
    T_gt = _pose(t=(0.0, 0.0, 1.0))[None]
    T_est = _pose(t=(0.09, 0.0, 1.0))[None]
    assert adds_error(T_est, T_gt, pts).item() == pytest.approx(0.17 / 3, abs=1e-12)
    assert adds_error(T_gt, T_est, pts).item() == pytest.approx(0.10 / 3, abs=1e-12)


def test_adds_matches_brute_force_on_an_asymmetric_cloud():
    rng = np.random.default_rng(3)
    # A dense blob and a sparse arm along +x: shifting along the arm covers the ground truth unevenly.
    arm = np.stack([np.linspace(0.05, 0.2, 7), np.zeros(7), np.zeros(7)], axis=1)
    pts = np.concatenate([rng.normal(size=(50, 3)) * 0.005, arm])

    def pose(angle_deg, axis, t):
        T = torch.eye(4, dtype=F64)
        T[:3, :3] = axis_angle_matrix(torch.tensor(axis, dtype=F64), torch.tensor(math.radians(angle_deg), dtype=F64))
        T[:3, 3] = torch.tensor(t, dtype=F64)
        return T

    T_gt = torch.stack([pose(20.0, (0.3, 1.0, 0.2), (0.01, -0.02, 0.8)), pose(-70.0, (1.0, 0.0, 0.5), (0.0, 0.0, 1.2))])
    T_est = torch.stack([pose(25.0, (0.3, 1.0, 0.2), (0.09, -0.02, 0.82)),
                         pose(-60.0, (1.0, 0.0, 0.5), (0.06, 0.0, 1.2))])
    got = adds_error(T_est, T_gt, torch.from_numpy(pts))
    for n in range(2):
        g = pts @ T_gt[n, :3, :3].numpy().T + T_gt[n, :3, 3].numpy()
        e = pts @ T_est[n, :3, :3].numpy().T + T_est[n, :3, 3].numpy()
        d = np.linalg.norm(g[:, None, :] - e[None, :, :], axis=-1)  # [gt point, est point]
        expected, reverse = d.min(axis=1).mean(), d.min(axis=0).mean()
        assert abs(expected - reverse) > 0.01  # the case tells the two directions apart (> 1 cm)
        assert got[n].item() == pytest.approx(expected, rel=1e-12)


def test_mssd_and_mspd_without_symmetry():
    pts = _ring(0.05, n=8)
    T_gt = _pose(t=(0.0, 0.0, 1.0))[None]
    # Rotation by 40 degrees about z: every ring point moves by the chord 2 r sin(20 deg).
    T_rot = _pose(_rz(40.0), (0.0, 0.0, 1.0))[None]
    assert mssd_error(T_rot, T_gt, pts).item() == pytest.approx(2 * 0.05 * math.sin(math.radians(20)), rel=1e-12)
    # A 2 mm shift in x at depth 1 m and focal 500 px moves every projection by exactly 1 px.
    K = torch.tensor([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]], dtype=F64)
    T_shift = _pose(t=(0.002, 0.0, 1.0))[None]
    assert mspd_error(T_shift, T_gt, pts, K).item() == pytest.approx(1.0, rel=1e-9)
    assert mssd_error(T_shift, T_gt, pts).item() == pytest.approx(0.002, rel=1e-9)


def test_discrete_symmetry_box():
    syms = symmetry_transforms(BOX_Z2)
    assert syms.shape == (2, 4, 4) and is_symmetric(BOX_Z2)
    pts = torch.tensor([[0.05, 0.02, 0.01], [-0.03, 0.04, -0.02], [0.01, -0.05, 0.03]], dtype=F64)
    T_gt = _pose(_rz(10.0), (0.01, -0.02, 0.8))[None]
    T_est = T_gt @ syms[1]  # the symmetric twin: indistinguishable
    assert mssd_error(T_est, T_gt, pts, syms).item() == pytest.approx(0.0, abs=1e-12)
    K = torch.tensor([[600.0, 0, 320], [0, 600.0, 240], [0, 0, 1]], dtype=F64)
    assert mspd_error(T_est, T_gt, pts, K, syms).item() == pytest.approx(0.0, abs=1e-9)
    assert rotation_error_deg(T_est[:, :3, :3], T_gt[:, :3, :3]).item() == pytest.approx(180.0, abs=1e-6)
    assert rotation_error_sym_deg(T_est[:, :3, :3], T_gt[:, :3, :3], syms).item() == pytest.approx(0.0, abs=1e-6)
    # Without the symmetry the same estimate is far off: max distance = 2 x largest radius in xy.
    radius = pts[:, :2].norm(dim=-1).max().item()
    assert mssd_error(T_est, T_gt, pts).item() == pytest.approx(2 * radius, rel=1e-9)


def test_continuous_symmetry_cylinder_is_discretised_like_bop():
    syms = symmetry_transforms(CYLINDER)
    n = math.ceil(math.pi / 0.01)  # 315 steps of 2 pi / 315
    assert syms.shape == (n, 4, 4)
    assert torch.allclose(syms[0], torch.eye(4, dtype=F64))
    pts = torch.cat([_ring(0.05, 12), torch.tensor([[0.0, 0.0, 0.04], [0.0, 0.0, -0.04]], dtype=F64)])
    T_gt = _pose(t=(0.0, 0.0, 1.0))[None]
    # A 45-degree turn about the axis: the nearest discretised step is 39 x 360/315 = 44.571 deg,
    # so what is left is 0.4286 deg, and the largest displacement is the chord at radius 5 cm.
    T_est = _pose(_rz(45.0), (0.0, 0.0, 1.0))[None]
    step = 360.0 / n
    left = abs(45.0 - round(45.0 / step) * step)
    expect = 2 * 0.05 * math.sin(math.radians(left) / 2)
    assert mssd_error(T_est, T_gt, pts, syms).item() == pytest.approx(expect, rel=1e-6)
    # ADD-S on the dense ring would be small; plain ADD sees the whole 45 degrees.
    assert add_error(T_est, T_gt, _ring(0.05, 12)).item() == pytest.approx(2 * 0.05 * math.sin(math.radians(22.5)))
    assert rotation_error_sym_deg(T_est[:, :3, :3], T_gt[:, :3, :3], syms).item() == pytest.approx(left, abs=1e-6)


def test_continuous_symmetry_with_offset_axis():
    # The ring is centred at x = 10 mm and symmetric about the vertical axis through its centre.
    info = {"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [10.0, 0, 0]}]}
    syms = symmetry_transforms(info)
    pts = _ring(0.03, 6, centre=(0.01, 0.0, 0.0))
    T_gt = _pose(t=(0.0, 0.0, 0.7))[None]
    n = len(syms)
    T_est = T_gt @ syms[n // 3]  # an exact symmetry step about the offset axis
    assert mssd_error(T_est, T_gt, pts, syms).item() == pytest.approx(0.0, abs=1e-12)
    # The same angle about the model origin (wrong axis) leaves the ring's centre displaced.
    angle = 2 * math.pi * (n // 3) / n
    T_bad = _pose(_rz(math.degrees(angle)), (0.0, 0.0, 0.7))[None]
    centre_shift = 2 * 0.01 * math.sin(angle / 2)
    assert mssd_error(T_bad, T_gt, pts, syms).item() == pytest.approx(centre_shift, rel=1e-6)


def test_symmetries_compose_discrete_and_continuous():
    info = {**CYLINDER, "symmetries_discrete": BOX_Z2["symmetries_discrete"]}
    assert symmetry_transforms(info).shape == (2 * 315, 4, 4)
    assert symmetry_transforms({}).shape == (1, 4, 4) and not is_symmetric({})
    assert symmetry_transforms(CYLINDER, max_sym_disc_step=0.1).shape == (32, 4, 4)


def test_recalls_are_strict_and_average_over_thresholds():
    assert recall([0.1, 0.2, 0.3], 0.2) == pytest.approx(1 / 3)
    assert recall([0.1, float("nan")], 1.0) == pytest.approx(0.5)
    assert math.isnan(recall([], 1.0))
    # Diameter 0.1 m -> thresholds 5, 10, ..., 50 mm: 3 mm passes all 10, 7 mm passes 9, 60 mm none.
    th = mssd_thresholds(torch.tensor([0.1, 0.1, 0.1]))
    assert th.shape == (3, 10) and th[0, 0].item() == pytest.approx(0.005)
    assert average_recall([0.003, 0.007, 0.06], th) == pytest.approx((1.0 + 0.9 + 0.0) / 3)
    assert mspd_thresholds(640.0).tolist() == pytest.approx([5.0 * k for k in range(1, 11)])
    assert mspd_thresholds(320.0)[0].item() == pytest.approx(2.5)
    assert average_recall([12.0], mspd_thresholds(640.0)) == pytest.approx(0.8)


def test_view_angle():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    assert view_angle_deg(a, b).tolist() == pytest.approx([90.0, 45.0], abs=1e-9)


def test_bad_inputs_name_the_argument():
    T = torch.eye(4)[None]
    with pytest.raises(ValueError, match="T_est"):
        add_error(torch.eye(4), T, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="points"):
        mssd_error(T, T, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="syms"):
        mssd_error(T, T, torch.zeros(4, 3), syms=torch.eye(3))
    with pytest.raises(ValueError, match="K"):
        mspd_error(T, T, torch.zeros(4, 3), torch.eye(4))
    with pytest.raises(ValueError, match="symmetries_discrete"):
        symmetry_transforms({"symmetries_discrete": [[1, 0, 0]]})
    with pytest.raises(ValueError, match="thresholds"):
        average_recall([1.0, 2.0], torch.ones(3, 4))
