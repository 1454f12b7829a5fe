"""The evaluation report: a JSON file, a Markdown table and PNG figures, for one or more methods.

`write_report(out_dir, tables, meta, tiles)` writes

    metrics.json           {"meta": ..., "methods": {name: {"overall": {...}, "per_object": {...}}},
                            "per_estimate": {name: {column: [...]}}}   (NaN written as null)
    report.md              overall table (one row per method) and one per-object table per method
    error_histograms.png   rotation, translation, MSSD and MSPD error histograms (all methods)
    recall_curves.png      recall against threshold for MSSD, MSPD, ADD(-S) and rotation error
    overlays.png           qualitative grid (when tiles are given)

and returns the summaries. Methods are compared on the same estimates (same queries, same order).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from vpog.evaluation.metrics import MSPD_THRESHOLDS, MSSD_THRESHOLDS
from vpog.evaluation.plots import OverlayTile, histogram_figure, overlay_grid, recall_figure
from vpog.evaluation.scoring import ErrorTable, finite_or_none, recall_curve, summarize

log = logging.getLogger(__name__)

# (summary key, column header, format): the columns of the Markdown tables.
TABLE_COLUMNS = (
    ("n", "n", "{:.0f}"),
    ("ar", "AR", "{:.3f}"),
    ("ar_mssd", "AR_MSSD", "{:.3f}"),
    ("ar_mspd", "AR_MSPD", "{:.3f}"),
    ("add_s_recall", "ADD(-S) 0.1d", "{:.3f}"),
    ("rot_err_deg_median", "rot err med (deg)", "{:.1f}"),
    ("rot_err_sym_deg_median", "rot err sym med (deg)", "{:.1f}"),
    ("trans_err_mm_median", "trans err med (mm)", "{:.1f}"),
    ("retrieval_err_deg_median", "retrieval err med (deg)", "{:.1f}"),
    ("retrieval_acc15", "retrieval acc 15deg", "{:.3f}"),
    ("pnp_fallbacks", "PnP fallbacks", "{:.0f}"),
)


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return fmt.format(value)


def markdown_table(rows: Mapping[str, Mapping[str, float]], first_header: str = "method") -> str:
    """A Markdown table with one row per entry of `rows` ({name: summary}) and the `TABLE_COLUMNS`."""
    head = "| " + " | ".join([first_header] + [h for _, h, _ in TABLE_COLUMNS]) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * len(TABLE_COLUMNS)) + "|"
    lines = [head, sep]
    for name, summary in rows.items():
        cells = [_cell(summary.get(k), f) for k, _, f in TABLE_COLUMNS]
        lines.append("| " + " | ".join([str(name)] + cells) + " |")
    return "\n".join(lines)


def markdown_report(summaries: Mapping[str, Mapping], meta: Mapping | None = None) -> str:
    """The whole report.md text: overall table, then per-object tables per method."""
    meta = dict(meta or {})
    out = ["# vpog evaluation", ""]
    for key in ("checkpoint", "data", "objects", "device", "command"):
        if key in meta:
            out.append(f"- {key}: `{meta[key]}`")
    out += ["", "## Overall (all estimates)", "", markdown_table({m: s["overall"] for m, s in summaries.items()}), ""]
    out += [
        "AR = mean of the BOP average recalls of MSSD (0.05..0.5 x diameter) and MSPD (5..50 px x width/640);",
        "ADD(-S): ADD, or ADD-S for symmetric objects, below 0.1 x diameter; retrieval: angle between the",
        "retrieved template's and the query's viewing directions. PnP fallbacks: estimates where PnP gave no",
        "valid pose (e.g. fewer than 4 correspondences), so the method returned the nearest-template pose.",
        "",
    ]
    for method, s in summaries.items():
        o = s["overall"]
        k = o.get("pnp_fallbacks", float("nan"))
        if k == k and k > 0:
            out.append(f"**{method}: PnP gave no valid pose for {k:.0f} of {o['n']:.0f} estimates**; there its "
                       "pose is the nearest-template pose (same errors as that baseline).")
            out.append("")
    for method, s in summaries.items():
        out += [f"## Per object: {method}", "", markdown_table(s["per_object"], first_header="object"), ""]
    return "\n".join(out)


def _json_clean(x):
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, float):
        return finite_or_none(x)
    if isinstance(x, torch.Tensor):
        return _json_clean(x.tolist())
    return x


def _curves(tables: Mapping[str, ErrorTable]) -> dict:
    """Recall curves of every method: {metric: (thresholds, {method: recalls})}."""
    mssd_x = [0.01 * k for k in range(0, 51)]  # x diameter
    mspd_x = [float(k) for k in range(0, 51)]  # px x width / 640
    rot_x = [float(k) for k in range(0, 181, 2)]
    curves = {"MSSD recall [x diameter]": (mssd_x, {}), "MSPD recall [px x w/640]": (mspd_x, {}),
              "ADD(-S) recall [x diameter]": (mssd_x, {}), "rotation error recall [deg]": (rot_x, {})}
    for method, t in tables.items():
        diam = t.tensor("diameter_m")
        scale = t.tensor("mspd_width_px") / 640.0
        sym = torch.tensor(t.columns["symmetric"], dtype=torch.bool)
        add_s = torch.where(sym, t.tensor("adds_m"), t.tensor("add_m")) if len(t) else t.tensor("add_m")
        dx = torch.tensor(mssd_x, dtype=torch.float64)
        curves["MSSD recall [x diameter]"][1][method] = recall_curve(t.tensor("mssd_m") / diam, dx)
        curves["MSPD recall [px x w/640]"][1][method] = recall_curve(
            t.tensor("mspd_px") / scale, torch.tensor(mspd_x, dtype=torch.float64))
        curves["ADD(-S) recall [x diameter]"][1][method] = recall_curve(add_s / diam, dx)
        curves["rotation error recall [deg]"][1][method] = recall_curve(
            t.tensor("rot_err_sym_deg"), torch.tensor(rot_x, dtype=torch.float64))
    return curves


def _histograms(tables: Mapping[str, ErrorTable]):
    series = {"rotation error [deg]": {}, "translation error [mm]": {}, "MSSD [x diameter]": {},
              "MSPD [px x w/640]": {}}
    for method, t in tables.items():
        series["rotation error [deg]"][method] = t.tensor("rot_err_deg").tolist()
        series["translation error [mm]"][method] = t.tensor("trans_err_mm").tolist()
        series["MSSD [x diameter]"][method] = (t.tensor("mssd_m") / t.tensor("diameter_m")).tolist()
        series["MSPD [px x w/640]"][method] = (t.tensor("mspd_px") / (t.tensor("mspd_width_px") / 640)).tolist()
    trans = torch.tensor([v for s in series["translation error [mm]"].values() for v in s], dtype=torch.float64)
    trans = trans[torch.isfinite(trans)]
    t_hi = float(torch.quantile(trans, 0.95)) if len(trans) else 1.0
    ranges = {"rotation error [deg]": (0.0, 180.0), "translation error [mm]": (0.0, max(t_hi, 1.0)),
              "MSSD [x diameter]": (0.0, 1.0), "MSPD [px x w/640]": (0.0, 100.0)}
    return series, ranges


def write_report(out_dir: str | Path, tables: Mapping[str, ErrorTable], meta: Mapping | None = None,
                 tiles: Sequence[OverlayTile] | None = None, plots: bool = True) -> dict:
    """Write metrics.json, report.md and the figures into out_dir; return {method: summary}."""
    if not tables:
        raise ValueError("tables must hold at least one method's ErrorTable")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {m: summarize(t) for m, t in tables.items()}
    doc = {
        "meta": dict(meta or {}),
        "thresholds": {"mssd_x_diameter": list(MSSD_THRESHOLDS), "mspd_px_x_width_over_640": list(MSPD_THRESHOLDS),
                       "add_s_x_diameter": 0.1, "retrieval_deg": 15.0},
        "methods": summaries,
        "per_estimate": {m: t.to_dict() for m, t in tables.items()},
    }
    (out / "metrics.json").write_text(json.dumps(_json_clean(doc), indent=1))
    (out / "report.md").write_text(markdown_report(summaries, meta))
    if plots:
        series, ranges = _histograms(tables)
        histogram_figure(series, ranges).save(out / "error_histograms.png")
        recall_figure(_curves(tables)).save(out / "recall_curves.png")
        if tiles:
            overlay_grid(tiles).save(out / "overlays.png")
    log.info("wrote the evaluation report to %s", out)
    return summaries
