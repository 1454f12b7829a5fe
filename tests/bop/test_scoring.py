"""BOP 2019 scoring (vpog.bop.scoring): greedy matching, valid instances, recalls and AR on hand-made errors,
then the whole evaluation on a tiny rendered BOP dataset (EGL)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vpog.bop.scoring import (
    MSPD_THRESHOLDS,
    MSSD_THRESHOLDS,
    VSD_THRESHOLDS,
    Bop19Config,
    EstimateErrors,
    TargetErrors,
    count_matches,
    match_greedy,
    scores_from_targets,
    top_indices,
    valid_gt_mask,
)


def test_thresholds_are_the_toolkits():
    assert VSD_THRESHOLDS == tuple(np.arange(0.05, 0.51, 0.05)) and len(VSD_THRESHOLDS) == 10
    assert MSSD_THRESHOLDS[2] == 0.15000000000000002  # np.arange's float, as passed on the toolkit's command line
    assert MSPD_THRESHOLDS == (5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0)


def test_top_indices_sorts_by_score_and_keeps_file_order_on_ties():
    assert top_indices([0.2, 0.9, 0.5, 0.9, 0.1], 3) == [1, 3, 2]
    assert top_indices([0.2, 0.9], None) == [1, 0]
    assert top_indices([], 2) == []


def test_valid_instances_most_visible_first_or_by_threshold():
    obj, visib = [1, 1, 2, 1, 3], [0.5, 0.9, 0.05, 0.9, 0.8]
    targets = {1: 2, 2: 1}
    # -1: per target object its inst_count most visible (ties by index); object 3 is not a target.
    assert valid_gt_mask(obj, visib, targets).tolist() == [False, True, True, True, False]
    # >= 0.1: every instance of a target object visible enough, whatever inst_count says.
    assert valid_gt_mask(obj, visib, targets, 0.1).tolist() == [True, True, False, True, False]
    # Unknown visibility counts as fully visible.
    assert valid_gt_mask([1, 1], [None, 0.3], {1: 1}).tolist() == [True, False]
    with pytest.raises(ValueError, match="same length"):
        valid_gt_mask([1], [0.5, 0.5], {1: 1})


def test_greedy_matching_goes_by_score_not_by_best_assignment():
    errors = np.array([[0.05, 0.10],   # A: best match is instance 0
                       [0.02, 0.50]])  # B: only instance 0 is good enough
    # A (higher score) takes instance 0; B is left with instance 1, which fails at 0.2.
    assert match_greedy(errors, [0.9, 0.5], 0.2).tolist() == [0, -1]
    # With B first, both match.
    assert match_greedy(errors, [0.5, 0.9], 0.2).tolist() == [1, 0]
    # At 0.6 A takes its best (0), B takes the remaining one (0.5 < 0.6).
    assert match_greedy(errors, [0.9, 0.5], 0.6).tolist() == [0, 1]
    # Strictly below the threshold: 0.05 does not pass 0.05, so A takes instance 1 at 0.1 instead.
    assert match_greedy(errors, [0.9, 0.5], 0.05).tolist() == [-1, 0]
    # Only the best estimate when max_estimates = 1.
    assert match_greedy(errors, [0.9, 0.5], 0.6, max_estimates=1).tolist() == [0, -1]


def test_greedy_matching_skips_instances_that_do_not_count():
    errors = np.array([[0.01, 0.10, 0.10]])
    assert match_greedy(errors, [1.0], 0.2, gt_valid=[False, True, True]).tolist() == [1]  # tie: lower index
    assert match_greedy(errors, [1.0], 0.2, gt_valid=[False, False, False]).tolist() == [-1]
    assert match_greedy(np.array([[np.nan, np.inf]]), [1.0], 0.2).tolist() == [-1]
    assert match_greedy(np.zeros((0, 2)), [], 0.2).tolist() == []
    with pytest.raises(ValueError, match=r"errors must have shape \[E, G\]"):
        match_greedy(np.zeros((2, 2)), [1.0], 0.2)
    with pytest.raises(ValueError, match="gt_valid must have shape"):
        match_greedy(np.zeros((1, 2)), [1.0], 0.2, gt_valid=[True])


def _target(obj_id, errors_mm, valid, scores=None, diameter=100.0, width=640, im_id=0, vsd=None, mspd=None):
    """A TargetErrors with MSSD errors [E, G] in mm (VSD and MSPD set to the same fraction of their scale
    unless given)."""
    errors_mm = np.asarray(errors_mm, dtype=np.float64).reshape(-1, len(valid))
    scores = scores if scores is not None else [1.0 - 0.1 * i for i in range(len(errors_mm))]
    tg = TargetErrors(1, im_id, obj_id, len(valid), np.arange(len(valid)), np.asarray(valid, bool), diameter, width)
    for i, row in enumerate(errors_mm):
        frac = row / diameter
        v = np.repeat(frac[:, None], 10, axis=1) if vsd is None else np.asarray(vsd[i], dtype=np.float64)
        p = frac * 100.0 if mspd is None else np.asarray(mspd[i], dtype=np.float64)
        tg.estimates.append(EstimateErrors(i, 1, im_id, obj_id, scores[i], v, row, p))
    return tg


def test_ground_truth_errors_give_recall_one_and_a_missing_target_less():
    perfect = [_target(1, [[0.0, 9.0], [9.0, 0.0]], [True, True]), _target(2, [[0.0]], [True], im_id=1)]
    s = scores_from_targets(perfect)
    assert s["ar"] == s["ar_vsd"] == s["ar_mssd"] == s["ar_mspd"] == 1.0
    assert s["per_object"][1] == {"instances": 2, "ar": 1.0, "ar_vsd": 1.0, "ar_mssd": 1.0, "ar_mspd": 1.0}
    # Object 2 in another image has no estimate: 3 of 4 counted instances found at every threshold.
    missing = perfect + [_target(2, np.zeros((0, 1)), [True], im_id=2)]
    s = scores_from_targets(missing)
    assert s["ar"] == pytest.approx(0.75, abs=1e-15)
    assert s["recalls"]["mssd"] == [0.75] * 10 and np.asarray(s["recalls"]["vsd"]).shape == (10, 10)
    assert s["per_object"][2]["ar"] == 0.5 and s["per_object"][2]["instances"] == 2


def test_recalls_normalise_by_diameter_and_image_width():
    # MSSD 12 mm of a 100 mm object: 0.12 passes 0.15 .. 0.5 (8 of 10 thresholds).
    # MSPD 12 px on a 320-pixel-wide image counts as 24 px: passes 25 .. 50 px (6 of 10).
    # VSD 0.27 for every tau: passes 0.3 .. 0.5 (5 thresholds) x 10 taus.
    tg = _target(1, [[12.0]], [True], width=320, vsd=[np.full((1, 10), 0.27)], mspd=[[12.0]])
    s = scores_from_targets([tg])
    assert s["ar_mssd"] == pytest.approx(0.8) and s["ar_mspd"] == pytest.approx(0.6)
    assert s["ar_vsd"] == pytest.approx(0.5)
    assert s["ar"] == pytest.approx((0.8 + 0.6 + 0.5) / 3)
    np.testing.assert_array_equal(s["recalls"]["mssd"], [0, 0] + [1] * 8)


def test_counts_ignore_invalid_instances_and_cap_them_with_n_top():
    # Two instances, only the second counts; the estimate is perfect on the first (ignored) one.
    tg = _target(1, [[0.0, 30.0]], [False, True])
    tps, counted = count_matches([tg], "mssd", 0.1)
    assert tps == {1: 0} and counted == {1: 1}
    tps, counted = count_matches([tg], "mssd", 0.5)
    assert tps == {1: 1}
    # n_top = 1: at most one instance per target counts, and only the best estimate is matched.
    two = _target(1, [[0.0, 9.0], [9.0, 0.0]], [True, True])
    assert count_matches([two], "mssd", 0.05, n_top=1) == ({1: 1}, {1: 1})
    assert count_matches([two], "mssd", 0.05) == ({1: 2}, {1: 2})


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="visib_gt_min"):
        Bop19Config(visib_gt_min=2.0)
    with pytest.raises(ValueError, match="mssd_thresholds"):
        Bop19Config(mssd_thresholds=())
    with pytest.raises(ValueError, match="pixels"):
        Bop19Config(pixels="corner")


# --------------------------------------------------------------------------------------------
# The whole evaluation on a rendered dataset (EGL)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, require_egl):
    from tests.bop.scored_dataset import write_scored_dataset
    from vpog.bop.dataset import BopDataset

    root = tmp_path_factory.mktemp("bop") / "tiny"
    written = write_scored_dataset(root)
    return BopDataset(root), written


def _gt_results(written, score=0.9, skip_images=()):
    from vpog.bop.results import PoseResult

    return [PoseResult(1, im_id, o, score, R, t, 0.25) for im_id, insts in written["poses"].items()
            if im_id not in skip_images for o, R, t in insts]


@pytest.mark.render
def test_ground_truth_poses_score_one(scored):
    from vpog.bop.scoring import evaluate_bop19

    ds, written = scored
    results = _gt_results(written)
    s = evaluate_bop19(ds, results)
    assert (s.average_recall, s.average_recall_vsd, s.average_recall_mssd, s.average_recall_mspd) == (1, 1, 1, 1)
    c = s.counts
    # 4 targets in 3 images, 5 counted instances; object 2 behind the wall in image 1 is ignored, and the
    # estimate for it is not for a target.
    assert (c["targets"], c["target_images"], c["gt_counted"], c["gt_ignored"]) == (4, 3, 5, 1)
    assert (c["estimates"], c["estimates_evaluated"], c["estimates_not_target"]) == (6, 5, 1)
    assert c["target_images_without_estimates"] == 0 and c["target_instances_missing"] == 0
    assert s.average_time_per_image == pytest.approx(0.25) and s.problems == []
    for tg in s.targets:
        gts = ds.gt(1, tg.im_id)
        for e in tg.estimates:
            # errors against the estimate's own instance are 0
            k = [j for j, g in enumerate(tg.gt_ids) if np.allclose(gts[g].t, results[e.row].t)][0]
            assert e.mssd[k] == pytest.approx(0.0, abs=1e-9) and e.mspd[k] == pytest.approx(0.0, abs=1e-9)
            assert not e.vsd[k].any()
    out = json.loads(json.dumps(s.to_json()))  # JSON-ready (inf -> null)
    assert out["bop19_average_recall"] == 1.0 and len(out["estimates"]) == 5
    assert set(out["per_object"]) == {"1", "2"}


@pytest.mark.render
def test_missing_wrong_and_extra_estimates(scored):
    from vpog.bop.results import PoseResult
    from vpog.bop.scoring import evaluate_bop19

    ds, written = scored
    # No estimate for image 2 (1 of 5 counted instances): recall 0.8 at every threshold.
    s = evaluate_bop19(ds, _gt_results(written, skip_images=(2,)))
    assert s.average_recall == pytest.approx(0.8) and s.recalls["mssd"] == [0.8] * 10
    assert s.counts["target_images_without_estimates"] == 1 and s.counts["target_instances_missing"] == 1
    assert s.per_object[2]["ar"] == pytest.approx(0.5)

    R0, t0 = written["poses"][0][0][1], written["poses"][0][0][2]
    far = PoseResult(1, 0, 1, 0.95, R0, t0 + [40.0, 0.0, 0.0], 0.25)  # 40 mm aside: wrong everywhere
    # A wrong estimate with a lower score than the right one: beyond the top inst_count (1), no effect.
    s = evaluate_bop19(ds, _gt_results(written) + [PoseResult(1, 0, 1, 0.1, far.R, far.t, 0.25)])
    assert s.average_recall == 1.0 and s.counts["estimates_beyond_top_n"] == 1
    # The same with the highest score: it displaces the right one, object 1 of image 0 is lost.
    s = evaluate_bop19(ds, _gt_results(written) + [far])
    assert s.average_recall == pytest.approx(0.8) and s.counts["estimates_beyond_top_n"] == 1
    assert s.per_object[1]["ar"] == pytest.approx(2 / 3)


@pytest.mark.render
def test_symmetric_object_and_two_instances(scored):
    from tests.bop.scored_dataset import FLIPS
    from vpog.bop.results import PoseResult
    from vpog.bop.scoring import evaluate_bop19

    ds, written = scored
    res = _gt_results(written)
    # Object 2 (symmetric box) estimated turned by 180 degrees about its x axis: still right.
    for i, r in enumerate(res):
        if r.obj_id == 2:
            res[i] = PoseResult(r.scene_id, r.im_id, 2, r.score, r.R @ FLIPS["x"], r.t, r.time)
    # The two instances of object 1 in image 1, listed in the other order with different scores.
    ones = [i for i, r in enumerate(res) if r.im_id == 1 and r.obj_id == 1]
    res[ones[0]], res[ones[1]] = res[ones[1]], res[ones[0]]
    res[ones[0]].score, res[ones[1]].score = 0.3, 0.8
    s = evaluate_bop19(ds, res)
    assert (s.average_recall_vsd, s.average_recall_mssd, s.average_recall_mspd) == (1.0, 1.0, 1.0)
    # Turned by a non-symmetry (90 degrees about z), object 2 is wrong for MSSD / MSPD.
    from vpog.bop.pose_error import rotation_about_axis

    bad = [PoseResult(r.scene_id, r.im_id, 2, r.score, r.R @ rotation_about_axis([0, 0, 1], np.pi / 2), r.t,
                      r.time) if r.obj_id == 2 else r for r in res]
    s = evaluate_bop19(ds, bad)
    assert s.per_object[2]["ar_mssd"] < 0.5 and s.per_object[1]["ar"] == 1.0
