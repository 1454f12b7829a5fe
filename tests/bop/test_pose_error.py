"""BOP 2019 pose errors (vpog.bop.pose_error) on cases computed by hand: VSD on flat plates facing the camera,
MSSD / MSPD under shifts and symmetries, the toolkit's symmetry discretisation, visibility masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vpog.bop.pose_error import (
    VSD_TAUS,
    DepthRenderer,
    depth_to_distance,
    mspd,
    mssd,
    rotation_about_axis,
    sphere_projections_overlap,
    symmetry_transforms,
    visible_mask_est,
    visible_mask_gt,
    vsd,
    vsd_delta_mm,
    vsd_from_depth,
)

H, W = 48, 64
K = np.array([[1000.0, 0.0, 31.5], [0.0, 1000.0, 23.5], [0.0, 0.0, 1.0]])  # long focal: distance ~ depth


def _rz(deg: float) -> np.ndarray:
    return rotation_about_axis([0.0, 0.0, 1.0], math.radians(deg))


def _plate(depth_mm: float, rows=slice(10, 20), cols=slice(10, 30), background: float = 0.0) -> np.ndarray:
    """A depth image [H, W] mm: a fronto-parallel plate at depth_mm on `rows` x `cols` (200 px by default)."""
    d = np.full((H, W), background)
    d[rows, cols] = depth_mm
    return d


# --------------------------------------------------------------------------------------------
# Symmetries


def test_symmetry_transforms_follow_the_toolkit_discretisation():
    ident = symmetry_transforms({})
    assert ident.R.shape == (1, 3, 3) and np.array_equal(ident.R[0], np.eye(3)) and not ident.t.any()

    flip = np.eye(4)
    flip[:3, :3] = _rz(180.0)
    flip[:3, 3] = [0.0, 0.0, 7.5]  # mm, kept as given
    disc = symmetry_transforms({"symmetries_discrete": [flip.reshape(-1).tolist()]})
    assert len(disc.R) == 2
    np.testing.assert_allclose(disc.R[1], _rz(180.0), atol=1e-15)
    np.testing.assert_allclose(disc.t[1], [0.0, 0.0, 7.5])

    # Continuous about z through (10, 0, 0): ceil(pi / 0.01) = 315 steps of 2 pi / 315, the identity first.
    cont = symmetry_transforms({"symmetries_continuous": [{"axis": [0, 0, 2], "offset": [10, 0, 0]}]})
    assert len(cont.R) == 315
    np.testing.assert_allclose(cont.R[0], np.eye(3), atol=1e-15)
    np.testing.assert_allclose(cont.R[1], _rz(360.0 / 315), atol=1e-15)
    on_axis = np.array([10.0, 0.0, 5.0])
    np.testing.assert_allclose(cont.R @ on_axis + cont.t, np.tile(on_axis, (315, 1)), atol=1e-12)
    off_axis = cont.R @ np.array([20.0, 0.0, 0.0]) + cont.t  # a circle of radius 10 about the axis
    np.testing.assert_allclose(np.linalg.norm(off_axis - [10.0, 0.0, 0.0], axis=1), 10.0, atol=1e-12)

    # Both: every discrete one (identity included) composed with every continuous step, C o D.
    both = symmetry_transforms({"symmetries_discrete": [flip.reshape(-1).tolist()],
                                "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]},
                               max_sym_disc_step=0.1)
    assert len(both.R) == 2 * math.ceil(math.pi / 0.1)
    np.testing.assert_allclose(both.t[32], [0.0, 0.0, 7.5], atol=1e-12)  # C_0 o flip


@pytest.mark.parametrize("info, match", [
    ({"symmetries_discrete": [[1, 0, 0]]}, "16 numbers"),
    ({"symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]}, "non-zero 3-vector"),
    ({"symmetries_continuous": [{"offset": [0, 0, 0]}]}, "axis"),
])
def test_symmetry_transforms_reject_malformed_entries(info, match):
    with pytest.raises(ValueError, match=match):
        symmetry_transforms(info)


# --------------------------------------------------------------------------------------------
# MSSD / MSPD

PLANAR = np.array([[-20.0, -10.0, 0.0], [20.0, -10.0, 0.0], [20.0, 10.0, 0.0], [-20.0, 10.0, 0.0], [0.0, 0.0, 0.0]])


def test_mssd_and_mspd_of_shifts_computed_by_hand():
    t_gt = np.array([0.0, 0.0, 500.0])
    # Sideways by 5 mm: every point moves 5 mm, and 1000 * 5 / 500 = 10 px on the image.
    assert mssd(np.eye(3), t_gt + [5.0, 0.0, 0.0], np.eye(3), t_gt, PLANAR) == pytest.approx(5.0, abs=1e-12)
    assert mspd(np.eye(3), t_gt + [5.0, 0.0, 0.0], np.eye(3), t_gt, K, PLANAR) == pytest.approx(10.0, abs=1e-9)
    # 50 mm further: 50 mm in 3D; in the image the corner (20, 10) moves most, by |(20, 10)| fx (1/500 - 1/550).
    far = t_gt + [0.0, 0.0, 50.0]
    assert mssd(np.eye(3), far, np.eye(3), t_gt.reshape(3, 1), PLANAR) == pytest.approx(50.0, abs=1e-12)
    expected = math.hypot(20.0, 10.0) * 1000.0 * (1 / 500 - 1 / 550)
    assert mspd(np.eye(3), far, np.eye(3), t_gt, K, PLANAR) == pytest.approx(expected, rel=1e-12)


def test_an_estimate_turned_by_a_symmetry_has_zero_mssd_and_mspd():
    box = np.array([[x, y, z] for x in (-25.0, 25.0) for y in (-10.0, 10.0) for z in (-8.0, 8.0)])
    flip = np.eye(4)
    flip[:3, :3] = _rz(180.0)
    syms = symmetry_transforms({"symmetries_discrete": [flip.reshape(-1).tolist()]})
    R_gt, t_gt = rotation_about_axis([1.0, 2.0, 0.5], 0.7), np.array([10.0, -5.0, 600.0])
    R_est = R_gt @ _rz(180.0)
    assert mssd(R_est, t_gt, R_gt, t_gt, box, syms) == pytest.approx(0.0, abs=1e-9)
    assert mspd(R_est, t_gt, R_gt, t_gt, K, box, syms) == pytest.approx(0.0, abs=1e-9)
    assert mssd(R_est, t_gt, R_gt, t_gt, box) == pytest.approx(2 * math.hypot(25.0, 10.0), rel=1e-12)

    # A cylinder (rings about z): turns by a step of the discretisation are free, others cost at most
    # max_sym_disc_step x diameter (here r x step / 2 for half a step).
    ang = np.linspace(0, 2 * np.pi, 36, endpoint=False)
    cyl = np.concatenate([np.stack([30 * np.cos(ang), 30 * np.sin(ang), np.full(36, z)], 1) for z in (-40.0, 40.0)])
    csyms = symmetry_transforms({"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]})
    step = 2 * math.pi / 315
    on_grid = R_gt @ rotation_about_axis([0, 0, 1], 7 * step)
    assert mssd(on_grid, t_gt, R_gt, t_gt, cyl, csyms) == pytest.approx(0.0, abs=1e-9)
    assert mspd(on_grid, t_gt, R_gt, t_gt, K, cyl, csyms) == pytest.approx(0.0, abs=1e-9)
    half = R_gt @ rotation_about_axis([0, 0, 1], 7.5 * step)
    assert mssd(half, t_gt, R_gt, t_gt, cyl, csyms) == pytest.approx(2 * 30 * math.sin(step / 4), rel=1e-9)
    assert mssd(half, t_gt, R_gt, t_gt, cyl, csyms) <= 0.01 * 100.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(R_est=np.eye(4)), "R_est must have shape"),
    (dict(t_gt=np.zeros(4)), "t_gt must have shape"),
    (dict(pts=np.zeros((5, 2))), "pts must have shape"),
    (dict(pts=np.zeros((0, 3))), "pts must have shape"),
])
def test_mssd_names_the_bad_argument(kwargs, match):
    args = dict(R_est=np.eye(3), t_est=np.zeros(3), R_gt=np.eye(3), t_gt=np.zeros(3), pts=PLANAR)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mssd(**args)
    with pytest.raises(ValueError, match="K must have shape"):
        mspd(np.eye(3), np.zeros(3), np.eye(3), np.zeros(3), np.eye(4), PLANAR)


# --------------------------------------------------------------------------------------------
# Distance images and visibility


def test_depth_to_distance_is_the_length_of_the_back_projected_ray():
    Kc = np.array([[50.0, 0.0, 3.0], [0.0, 40.0, 2.0], [0.0, 0.0, 1.0]])
    depth = np.zeros((4, 6), np.float32)
    depth[1, 5] = 200.0  # pixel (u=5, v=1): x = (5 - 3) / 50, y = (1 - 2) / 40 at z = 1
    depth[2, 3] = 100.0  # the principal point: distance = depth
    dist = depth_to_distance(depth, Kc)
    assert dist.dtype == np.float64
    assert dist[1, 5] == pytest.approx(200.0 * math.sqrt(1 + 0.04 ** 2 + 0.025 ** 2), rel=1e-12)
    assert dist[2, 3] == pytest.approx(100.0, abs=0)
    assert (dist[depth == 0] == 0).all()


def test_visibility_masks_follow_the_bop19_rule():
    test = np.array([[100.0, 100.0, 0.0, 100.0]])
    model = np.array([[115.0, 115.5, 300.0, 0.0]])
    # within delta (<=) visible; beyond not; no test depth visible; no model never.
    assert visible_mask_gt(test, model, 15.0).tolist() == [[True, False, True, False]]
    # The estimate is also visible wherever the ground truth is visible and it covers the pixel.
    visib_gt = np.array([[False, True, False, True]])
    assert visible_mask_est(test, model, visib_gt, 15.0).tolist() == [[True, True, True, False]]
    with pytest.raises(ValueError, match="same shape"):
        visible_mask_gt(test, model[:, :2], 15.0)


# --------------------------------------------------------------------------------------------
# VSD on plates facing the camera (diameter 100 mm, delta 15 mm, BOP taus 0.05 .. 0.5)

TAUS = np.array(VSD_TAUS)


def test_vsd_depth_offsets_beyond_and_within_tau():
    gt = _plate(500.0)
    # 32 mm behind: every pixel is off by 0.32 diameters (x 1.0003 at most off-axis), wrong for tau <= 0.3.
    e = vsd_from_depth(gt, _plate(532.0), gt, K, 15.0, TAUS, 100.0)
    np.testing.assert_array_equal(e, (TAUS <= 0.3 + 1e-9).astype(float))
    # 12 mm: wrong only for tau 0.05 and 0.1.
    e = vsd_from_depth(gt, _plate(512.0), gt, K, 15.0, TAUS, 100.0)
    np.testing.assert_array_equal(e, (TAUS < 0.12).astype(float))
    # Not normalised: taus in mm.
    e = vsd_from_depth(gt, _plate(512.0), gt, K, 15.0, [10.0, 13.0], 100.0, normalized_by_diameter=False)
    np.testing.assert_array_equal(e, [1.0, 0.0])
    # The ground truth itself: 0.
    np.testing.assert_array_equal(vsd_from_depth(gt, gt, gt, K, 15.0, TAUS, 100.0), np.zeros(10))


def test_vsd_sideways_overlap_counts_the_non_shared_pixels():
    # Estimate 10 columns to the right: union 300 px, intersection 100 px at the same distance -> 200 / 300.
    for background in (0.0, 800.0):  # no depth there, or a wall behind: the estimate's extra pixels are visible
        test = _plate(500.0, background=background)
        e = vsd_from_depth(test, _plate(500.0, cols=slice(20, 40)), _plate(500.0), K, 15.0, TAUS, 100.0)
        np.testing.assert_allclose(e, np.full(10, 2.0 / 3.0), rtol=0, atol=1e-15)


def test_vsd_ignores_the_occluded_part_of_the_ground_truth():
    gt = _plate(500.0)
    test = gt.copy()
    test[10:20, 10:20] = 300.0  # an occluder hides the left half of the plate
    np.testing.assert_array_equal(vsd_from_depth(test, gt, gt, K, 15.0, TAUS, 100.0), np.zeros(10))
    # 32 mm behind: the hidden half does not count; the visible half is wrong for tau <= 0.3.
    e = vsd_from_depth(test, _plate(532.0), gt, K, 15.0, TAUS, 100.0)
    np.testing.assert_array_equal(e, (TAUS <= 0.3 + 1e-9).astype(float))
    # Estimate on the hidden half only (columns 0-19): nothing shared with the visible half -> 1.
    e = vsd_from_depth(test, _plate(500.0, cols=slice(0, 20)), gt, K, 15.0, TAUS, 100.0)
    np.testing.assert_array_equal(e, np.ones(10))


def test_vsd_is_one_when_nothing_is_visible():
    gt = _plate(500.0)
    wall = np.full((H, W), 300.0)  # everything behind a wall
    np.testing.assert_array_equal(vsd_from_depth(wall, gt, gt, K, 15.0, TAUS, 100.0), np.ones(10))
    with pytest.raises(ValueError, match="same shape"):
        vsd_from_depth(gt, gt[:, :10], gt, K, 15.0, TAUS, 100.0)


def test_vsd_renders_both_poses_through_the_callable():
    seen = []

    def render(R, t):  # a plate whose depth is t_z - 10
        seen.append(float(t[2]))
        return _plate(float(t[2]) - 10.0)

    e = vsd(np.eye(3), [0, 0, 542.0], np.eye(3), np.array([[0], [0], [510.0]]), _plate(500.0), K, render, 15.0,
            TAUS, 100.0)
    assert seen == [542.0, 510.0]
    np.testing.assert_array_equal(e, (TAUS <= 0.3 + 1e-9).astype(float))


def test_sphere_projection_overlap_and_deltas():
    r = 50.0
    assert sphere_projections_overlap(r, [0, 0, 500], [60, 0, 500])  # 0.12 < 50 (2 / 500) = 0.2
    assert not sphere_projections_overlap(r, [0, 0, 500], [110, 0, 500])  # 0.22 >= 0.2
    assert not sphere_projections_overlap(r, [0, 0, 0], [0, 0, 500])
    assert vsd_delta_mm("lmo") == 15.0 and vsd_delta_mm("itodd") == 5.0


# --------------------------------------------------------------------------------------------
# Rendering (EGL)


@pytest.fixture(scope="module")
def box_renderer(tmp_path_factory, require_egl):
    from tests.bop.bop_fixture import box_mesh, save_ply_like_toolkit

    path = tmp_path_factory.mktemp("box") / "obj_000001.ply"
    v, f = box_mesh((40.0, 30.0, 20.0))
    save_ply_like_toolkit(path, v, np.full((8, 3), 200), f)
    renderers = {p: DepthRenderer({1: path}, pixels=p) for p in ("toolkit", "centre")}
    yield renderers
    for r in renderers.values():
        r.close()


@pytest.mark.render
@pytest.mark.parametrize("pixels, offset", [("centre", 0.0), ("toolkit", 0.5)])
def test_depth_renderer_draws_the_box_front_face_in_millimetres(box_renderer, pixels, offset):
    Kr = np.array([[100.0, 0.0, 31.5], [0.0, 100.0, 23.5], [0.0, 0.0, 1.0]])
    depth = box_renderer[pixels].render(1, np.eye(3), [0.0, 0.0, 500.0], Kr, W, H)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    # Front face at z = 490 mm, spanning x in [-20, 20], y in [-15, 15] mm. Pixel (u, v) samples the image
    # point (u + offset, v + offset): it is covered when that point falls inside the face's projection.
    u = np.arange(W) + offset
    v = np.arange(H) + offset
    inside = ((np.abs(v - 23.5) <= 100 * 15 / 490)[:, None]) & ((np.abs(u - 31.5) <= 100 * 20 / 490)[None, :])
    np.testing.assert_array_equal(depth > 0, inside)
    np.testing.assert_allclose(depth[inside], 490.0, atol=1e-3)
    assert box_renderer[pixels].render(1, np.eye(3), [0.0, 0.0, -500.0], Kr, W, H).max() == 0


@pytest.mark.render
def test_vsd_with_the_depth_renderer_on_a_box_facing_the_camera(box_renderer):
    Kr = np.array([[300.0, 0.0, 63.7], [0.0, 300.0, 47.6], [0.0, 0.0, 1.0]])
    w, h = 128, 96
    renderer = box_renderer["toolkit"]
    t_gt = np.array([0.0, 0.0, 500.0])
    test = renderer.render(1, np.eye(3), t_gt, Kr, w, h)
    render = renderer.bind(1, Kr, w, h)
    diameter = math.sqrt(40.0 ** 2 + 30.0 ** 2 + 20.0 ** 2)
    # 20 mm further: the face (24.5 x 18.4 px) shrinks by ~4 %; shared pixels are off by ~20 mm = 0.37
    # diameters, wrong for tau <= 0.35. The smaller face lies inside the true one: union = the ground
    # truth's pixels, intersection = the estimate's.
    e = vsd(np.eye(3), t_gt + [0, 0, 20.0], np.eye(3), t_gt, test, Kr, render, 15.0, TAUS, diameter)
    gt_px = int((test > 0).sum())
    est_px = int((render(np.eye(3), t_gt + [0, 0, 20.0]) > 0).sum())
    frac_lost = (gt_px - est_px) / gt_px
    assert 0.02 < frac_lost < 0.2
    np.testing.assert_allclose(e, np.where(TAUS <= 0.35 + 1e-9, 1.0, frac_lost), atol=1e-12)
    np.testing.assert_array_equal(vsd(np.eye(3), t_gt, np.eye(3), t_gt, test, Kr, render, 15.0, TAUS, diameter),
                                  np.zeros(10))
