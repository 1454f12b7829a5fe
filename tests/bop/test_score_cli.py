"""`python -m vpog.bop.score`: arguments, one-line errors (exit 2) for bad inputs, scores_bop19.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.bop.bop_fixture import write_tiny_bop
from vpog.bop.score import UsageError, main, parse_args


def test_parse_args_fills_defaults_and_rejects_unknown_keys():
    args = parse_args(["dataset=/d", "results=/r.csv", "out=/o"])
    assert args["split"] == "test" and args["targets"] == "test_targets_bop19.json" and args["models"] == "models"
    with pytest.raises(UsageError, match="unknown key 'reslts'.*closest: results"):
        parse_args(["dataset=/d", "reslts=/r.csv", "out=/o"])
    with pytest.raises(UsageError, match="missing results=..."):
        parse_args(["dataset=/d", "out=/o"])
    with pytest.raises(UsageError, match="key=value"):
        parse_args(["dataset"])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture()
def tiny(tmp_path):
    root = tmp_path / "tiny"
    write_tiny_bop(root)
    return root


def test_missing_and_malformed_files_stop_with_one_line(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([f"dataset={tiny}", f"results={tmp_path / 'none.csv'}", f"out={out}"]) == 2
    assert "none.csv" in _error_line(capsys)

    bad = tmp_path / "bad.csv"
    bad.write_text("scene_id,im_id,obj_id,score,R,t,time\n3,0,1,0.9,1 0 0 0 1 0 0 0 1,0 0 400,0.1\n3,0,1,0.9,1 0 0\n")
    assert main([f"dataset={tiny}", f"results={bad}", f"out={out}"]) == 2
    line = _error_line(capsys)
    assert "bad.csv" in line and "line 3" in line

    assert main([f"dataset={tmp_path / 'nowhere'}", f"results={bad}", f"out={out}"]) == 2
    assert "nowhere" in _error_line(capsys)

    (tiny / "models" / "models_info.json").write_text("{not json")
    assert main([f"dataset={tiny}", f"results={bad}", f"out={out}"]) == 2
    assert "models_info.json" in _error_line(capsys)
    assert not out.exists()


def test_usage_errors_exit_2_and_help_exits_0(capsys):
    assert main(["dataset=/d", "out=/o"]) == 2
    assert "missing results" in _error_line(capsys)
    assert main(["--help"]) == 0
    assert "scores_bop19.json" in capsys.readouterr().out


@pytest.mark.render
def test_ground_truth_results_file_scores_one(tmp_path, capsys, require_egl):
    from tests.bop.scored_dataset import write_scored_dataset
    from vpog.bop.results import PoseResult, write_results

    root = tmp_path / "tiny"
    written = write_scored_dataset(root)
    rows = [PoseResult(1, im_id, o, 0.5, R, t, 0.1 * (im_id + 1)) for im_id, insts in written["poses"].items()
            for o, R, t in insts]
    csv = write_results(tmp_path / "vpog_tiny-test.csv", rows)
    out = tmp_path / "eval"
    assert main([f"dataset={root}", f"results={csv}", f"out={out}", "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "BOP19 AR 1.0000" in printed and "scores_bop19.json" in printed
    scores = json.loads((out / "scores_bop19.json").read_text())
    for key in ("bop19_average_recall", "bop19_average_recall_vsd", "bop19_average_recall_mssd",
                "bop19_average_recall_mspd"):
        assert scores[key] == 1.0
    assert scores["bop19_average_time_per_image"] == pytest.approx(0.2)
    assert scores["counts"]["gt_counted"] == 5 and scores["counts"]["estimates_not_target"] == 1
    assert scores["config"]["visib_gt_min"] == -1 and scores["per_object"]["2"]["ar"] == 1.0
    est = scores["estimates"][0]
    assert set(est) == {"row", "scene_id", "im_id", "obj_id", "score", "errors"}
    errs = next(iter(est["errors"].values()))
    assert len(errs["vsd"]) == 10 and np.isfinite(errs["mspd"])
