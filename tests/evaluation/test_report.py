"""Summaries, the JSON / Markdown report and the Pillow figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vpog.evaluation.metrics import symmetry_transforms
from vpog.evaluation.plots import OverlayTile, _nice_ticks
from vpog.evaluation.report import markdown_table, write_report
from vpog.evaluation.runner import PoseValidator, order_by_object, per_estimate_values
from vpog.evaluation.scoring import ErrorTable, pose_errors, recall_curve, summarize, summarize_table

F64 = torch.float64


def _poses(n, shift_mm):
    T = torch.eye(4, dtype=F64).repeat(n, 1, 1)
    T[:, 2, 3] = 0.5
    T_est = T.clone()
    T_est[:, 0, 3] += torch.as_tensor(shift_mm, dtype=F64) / 1000
    return T_est, T


def _table(shifts_mm, obj_id=1, diameter=0.1, valid=None):
    pts = torch.tensor([[0.05, 0, 0], [-0.05, 0, 0], [0, 0.05, 0], [0, 0, 0.05]], dtype=F64)
    T_est, T_gt = _poses(len(shifts_mm), shifts_mm)
    K = torch.tensor([[500.0, 0, 112], [0, 500.0, 112], [0, 0, 1]], dtype=F64).expand(len(shifts_mm), 3, 3)
    d = torch.tensor([[0.0, 0, 1]], dtype=F64).expand(len(shifts_mm), 3)
    d_pred = torch.tensor([[0.0, math.sin(math.radians(10)), math.cos(math.radians(10))]], dtype=F64)
    rows = pose_errors(T_est, T_gt, pts, symmetry_transforms({}), diameter, K, 640.0,
                       d_pred=d_pred.expand(len(shifts_mm), 3), d_query=d, obj_id=obj_id,
                       valid=None if valid is None else torch.tensor(valid))
    return ErrorTable(rows)


def test_summary_numbers_by_hand():
    # Shifts 3, 7, 12 mm on a 0.1 m object at 0.5 m with f = 500 px (1 mm -> 1 px at width 640):
    # ADD = MSSD = shift; MSPD = shift px. ADD < 10 mm for 2 of 3. AR_MSSD = (10 + 9 + 8) / 30.
    t = _table([3.0, 7.0, 12.0])
    s = summarize_table(t)
    assert s["n"] == 3
    assert s["add_s_recall"] == pytest.approx(2 / 3)
    assert s["ar_mssd"] == pytest.approx((10 + 9 + 8) / 30)
    assert s["ar_mspd"] == pytest.approx((10 + 9 + 8) / 30)  # 3, 7, 12 px against 5..50 px
    assert s["ar"] == pytest.approx((10 + 9 + 8) / 30)
    assert s["trans_err_mm_median"] == pytest.approx(7.0)
    assert s["rot_err_deg_median"] == pytest.approx(0.0, abs=1e-9)
    assert s["retrieval_err_deg_median"] == pytest.approx(10.0)
    assert s["retrieval_acc15"] == pytest.approx(1.0)


def test_per_object_split_and_overall():
    t = _table([3.0, 30.0], obj_id=1)
    t.extend(_table([60.0], obj_id=4).to_dict())
    s = summarize(t)
    assert set(s["per_object"]) == {"1", "4"}
    assert s["per_object"]["1"]["n"] == 2 and s["per_object"]["4"]["n"] == 1
    assert s["per_object"]["4"]["add_s_recall"] == 0.0
    assert s["overall"]["add_s_recall"] == pytest.approx(1 / 3)


def test_recall_curve_and_ticks():
    assert recall_curve(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 2.5, 10.0])) == pytest.approx(
        [0.0, 2 / 3, 1.0])
    ticks = _nice_ticks(0.0, 180.0)
    assert ticks[0] == 0.0 and ticks[-1] <= 180.0 and len(ticks) >= 4


def test_markdown_table_layout():
    text = markdown_table({"vpog": {"n": 3.0, "ar": 0.5}, "baseline": {"n": 3.0, "ar": float("nan")}})
    lines = text.splitlines()
    assert lines[0].startswith("| method | n | AR |")
    assert lines[2].startswith("| vpog | 3 | 0.500 |")
    assert lines[3].startswith("| baseline | 3 | - |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_write_report_files(tmp_path):
    tables = {"vpog": _table([3.0, 7.0, 12.0]), "nearest template": _table([20.0, 40.0, 90.0])}
    img = np.zeros((224, 224, 3), dtype=np.uint8)
    tiles = [OverlayTile(img, np.array([[10.0, 10.0], [100.0, 50.0]]), np.array([[12.0, 11.0]]), "obj 1\nerr 3 mm")
             for _ in range(3)]
    summaries = write_report(tmp_path, tables, meta={"checkpoint": "x.pt"}, tiles=tiles)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert set(doc["methods"]) == {"vpog", "nearest template"}
    assert doc["methods"]["vpog"]["overall"]["add_s_recall"] == pytest.approx(2 / 3)
    assert doc["methods"]["nearest template"]["overall"]["add_s_recall"] == 0.0
    assert len(doc["per_estimate"]["vpog"]["mssd_m"]) == 3
    md = (tmp_path / "report.md").read_text()
    assert "| vpog |" in md and "| nearest template |" in md and "## Per object: vpog" in md
    for name in ("error_histograms.png", "recall_curves.png", "overlays.png"):
        im = Image.open(tmp_path / name)
        assert im.size[0] > 200 and im.size[1] > 200
        # not blank: the figures draw something besides the white background
        assert np.asarray(im.convert("L")).std() > 5
    grid = np.asarray(Image.open(tmp_path / "overlays.png").convert("RGB")).astype(int)
    head_h = 16  # the colour legend above the tiles
    assert (grid[head_h + 10, 10] - [60, 255, 60]).__abs__().max() < 40  # an estimated-pose point is drawn green
    assert summaries["vpog"]["overall"]["n"] == 3


def test_pnp_fallbacks_are_counted_and_reported(tmp_path):
    # vpog: PnP invalid on 2 of 3 estimates (their pose is the template pose); the baseline has no solver.
    tables = {"vpog": _table([3.0, 7.0, 12.0], valid=[True, False, False]),
              "nearest template": _table([20.0, 40.0, 90.0])}
    s = summarize_table(tables["vpog"])
    assert s["pnp_fallbacks"] == 2 and s["pnp_valid_rate"] == pytest.approx(1 / 3)
    base = summarize_table(tables["nearest template"])
    assert math.isnan(base["pnp_fallbacks"]) and math.isnan(base["pnp_valid_rate"])
    write_report(tmp_path, tables, plots=False)
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["methods"]["vpog"]["overall"]["pnp_fallbacks"] == 2
    assert doc["methods"]["nearest template"]["overall"]["pnp_fallbacks"] is None
    md = (tmp_path / "report.md").read_text().splitlines()
    head = next(line for line in md if line.startswith("| method |"))
    assert head.rstrip(" |").endswith("PnP fallbacks")
    assert next(line for line in md if line.startswith("| vpog |")).endswith("| 2 |")
    assert next(line for line in md if line.startswith("| nearest template |")).endswith("| - |")
    assert any("no valid pose for 2 of 3 estimates" in line for line in md)
    # the trainer's validation summary carries the rate for methods with a solver only
    values = {f"pose/{m}/{k}": v for m, t in tables.items() for k, v in per_estimate_values(t.to_dict()).items()}
    summary = PoseValidator.summarise(values)
    assert summary["pose/vpog/pnp_fallback_rate"] == pytest.approx(2 / 3)
    assert "pose/nearest template/pnp_fallback_rate" not in summary


def test_write_report_needs_a_method(tmp_path):
    with pytest.raises(ValueError, match="tables"):
        write_report(tmp_path, {})


def test_order_by_object_groups_or_interleaves():
    objects = np.array([7, 3, 7, 3, 5, 7, 3, 7, 5, 7])  # object id of each instance
    positions = np.array([9, 0, 2, 5, 1, 3, 7, 4, 8, 6])  # a selection of them, in any order
    grouped = order_by_object(objects, positions)
    assert objects[grouped].tolist() == [3, 3, 3, 5, 5, 7, 7, 7, 7, 7]
    assert grouped.tolist() == [1, 3, 6, 4, 8, 0, 2, 5, 7, 9]
    runs = order_by_object(objects, positions, block=2)
    # first two of each object, then the next two, ...: a prefix of 6 covers every object
    assert runs.tolist() == [1, 3, 4, 8, 0, 2, 6, 5, 7, 9]
    assert set(objects[runs[:6]].tolist()) == {3, 5, 7}
    assert sorted(runs.tolist()) == sorted(positions.tolist())
    with pytest.raises(ValueError, match="block"):
        order_by_object(objects, positions, block=0)
