"""Per-estimate errors and their summaries (per object and overall) for the evaluation report.

`pose_errors` turns the estimates of one object into a table of errors (one row per estimate);
`ErrorTable` accumulates rows over objects and batches; `summarize` reduces a table to the numbers of
docs/conventions.md §8, per object and overall (instance-weighted, as BOP averages over instances).

Summary keys (every one a float; NaN when undefined):

    n                       number of estimates
    rot_err_deg_median      geodesic rotation error, median (degrees)
    rot_err_sym_deg_median  the same, smallest over the object's symmetries
    trans_err_mm_median     translation error, median (millimetres)
    add_s_recall            ADD (ADD-S for symmetric objects) < 0.1 x diameter
    ar_mssd, ar_mspd, ar    BOP average recalls (MSSD, MSPD, their mean)
    retrieval_err_deg_median, retrieval_acc15   template retrieval (docs/conventions.md §8)
    pnp_valid_rate          share of estimates the solver marked valid (NaN for a method without a solver)
    pnp_fallbacks           number of estimates where PnP gave no valid pose, so the method returned the
                            nearest-template pose instead (NaN for a method without a solver)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch

from vpog.evaluation.metrics import (
    ADD_THRESHOLD,
    RETRIEVAL_THRESHOLD_DEG,
    add_error,
    adds_error,
    average_recall,
    mspd_error,
    mspd_thresholds,
    mssd_error,
    mssd_thresholds,
    recall,
    rotation_error_deg,
    rotation_error_sym_deg,
    translation_error_mm,
    view_angle_deg,
)

COLUMNS = (
    "obj_id", "rot_err_deg", "rot_err_sym_deg", "trans_err_mm", "add_m", "adds_m", "symmetric",
    "diameter_m", "mssd_m", "mspd_px", "mspd_width_px", "retrieval_err_deg", "valid",
)
SUMMARY_KEYS = (
    "n", "rot_err_deg_median", "rot_err_sym_deg_median", "trans_err_mm_median", "add_s_recall",
    "ar_mssd", "ar_mspd", "ar", "retrieval_err_deg_median", "retrieval_acc15", "pnp_valid_rate", "pnp_fallbacks",
)


def pose_errors(
    T_est: torch.Tensor,
    T_gt: torch.Tensor,
    points: torch.Tensor,
    syms: torch.Tensor,
    diameter: float,
    K: torch.Tensor,
    mspd_width: float | torch.Tensor,
    d_pred: torch.Tensor | None = None,
    d_query: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    obj_id: int = 0,
) -> dict[str, list]:
    """Errors of N estimates of one object -> {column: list of N values} (columns as `COLUMNS`).

    T_est, T_gt: [N, 4, 4] T_m2c, metres. points: [P, 3] model points, metres. syms: [M, 4, 4]
    (`symmetry_transforms`). diameter: metres. K: [N, 3, 3] camera of the image where MSPD is
    measured, and mspd_width ([N] or a number) that image's width in pixels (MSPD thresholds scale
    with width / 640). d_pred, d_query: [N, 3] viewing directions of the retrieved template and of
    the query (NaN retrieval error when absent). valid: [N] bool solver flags; None for a method
    without a solver (the column then holds None).
    """
    N = len(T_est)
    symmetric = len(syms) > 1
    R_est, R_gt = T_est[:, :3, :3], T_gt[:, :3, :3]
    rows = {
        "obj_id": [int(obj_id)] * N,
        "rot_err_deg": rotation_error_deg(R_est, R_gt).tolist(),
        "rot_err_sym_deg": rotation_error_sym_deg(R_est, R_gt, syms).tolist(),
        "trans_err_mm": translation_error_mm(T_est[:, :3, 3], T_gt[:, :3, 3]).tolist(),
        "add_m": add_error(T_est, T_gt, points).tolist(),
        "adds_m": adds_error(T_est, T_gt, points).tolist(),
        "symmetric": [bool(symmetric)] * N,
        "diameter_m": [float(diameter)] * N,
        "mssd_m": mssd_error(T_est, T_gt, points, syms).tolist(),
        "mspd_px": mspd_error(T_est, T_gt, points, K, syms).tolist(),
        "mspd_width_px": torch.as_tensor(mspd_width, dtype=torch.float64).expand(N).tolist(),
        "retrieval_err_deg": (view_angle_deg(d_pred, d_query).tolist() if d_pred is not None and d_query is not None
                              else [float("nan")] * N),
        "valid": [None] * N if valid is None else [bool(v) for v in valid.tolist()],
    }
    return rows


class ErrorTable:
    """Rows of per-estimate errors (columns `COLUMNS`), accumulated over batches and objects."""

    def __init__(self, rows: Mapping[str, Sequence] | None = None):
        self.columns: dict[str, list] = {c: [] for c in COLUMNS}
        if rows is not None:
            self.extend(rows)

    def extend(self, rows: Mapping[str, Sequence]) -> None:
        lengths = {len(rows[c]) for c in COLUMNS if c in rows}
        missing = [c for c in COLUMNS if c not in rows]
        if missing or len(lengths) > 1:
            raise ValueError(f"rows must give every column with one length; missing {missing}, lengths {lengths}")
        for c in COLUMNS:
            self.columns[c].extend(rows[c])

    def __len__(self) -> int:
        return len(self.columns["obj_id"])

    def select(self, mask: Iterable[bool]) -> ErrorTable:
        keep = list(mask)
        return ErrorTable({c: [v for v, k in zip(vals, keep) if k] for c, vals in self.columns.items()})

    def tensor(self, column: str) -> torch.Tensor:
        return torch.tensor([float(v) for v in self.columns[column]], dtype=torch.float64)

    def to_dict(self) -> dict[str, list]:
        return {c: list(v) for c, v in self.columns.items()}


def _median(x: torch.Tensor) -> float:
    x = x[~torch.isnan(x)]
    return float(x.median()) if len(x) else float("nan")


def summarize_table(table: ErrorTable) -> dict[str, float]:
    """The summary numbers (see the module docstring) of one set of estimates."""
    n = len(table)
    if n == 0:
        return {k: (0.0 if k == "n" else float("nan")) for k in SUMMARY_KEYS}
    diam = table.tensor("diameter_m")
    sym = torch.tensor(table.columns["symmetric"], dtype=torch.bool)
    add_s = torch.where(sym, table.tensor("adds_m"), table.tensor("add_m"))
    ar_mssd = average_recall(table.tensor("mssd_m"), mssd_thresholds(diam))
    ar_mspd = average_recall(table.tensor("mspd_px"), mspd_thresholds(table.tensor("mspd_width_px")))
    retr = table.tensor("retrieval_err_deg")
    has_retr = ~torch.isnan(retr)
    flags = [bool(v) for v in table.columns["valid"] if v is not None]
    return {
        "n": float(n),
        "rot_err_deg_median": _median(table.tensor("rot_err_deg")),
        "rot_err_sym_deg_median": _median(table.tensor("rot_err_sym_deg")),
        "trans_err_mm_median": _median(table.tensor("trans_err_mm")),
        "add_s_recall": recall(add_s, ADD_THRESHOLD * diam),
        "ar_mssd": ar_mssd,
        "ar_mspd": ar_mspd,
        "ar": (ar_mssd + ar_mspd) / 2,
        "retrieval_err_deg_median": _median(retr),
        "retrieval_acc15": recall(retr[has_retr], RETRIEVAL_THRESHOLD_DEG) if bool(has_retr.any()) else float("nan"),
        "pnp_valid_rate": sum(flags) / len(flags) if flags else float("nan"),
        "pnp_fallbacks": float(len(flags) - sum(flags)) if flags else float("nan"),
    }


def summarize(table: ErrorTable) -> dict:
    """{"overall": summary, "per_object": {obj_id (str): summary}} of a table (see `summarize_table`)."""
    ids = sorted(set(int(i) for i in table.columns["obj_id"]))
    per_object = {str(i): summarize_table(table.select(o == i for o in table.columns["obj_id"])) for i in ids}
    return {"overall": summarize_table(table), "per_object": per_object}


def recall_curve(errors: torch.Tensor, thresholds: torch.Tensor) -> list[float]:
    """Recall at each threshold: errors [N] and thresholds [T] (or [N, T], per estimate) -> T floats."""
    e = torch.as_tensor(errors, dtype=torch.float64)
    th = torch.as_tensor(thresholds, dtype=torch.float64)
    if len(e) == 0:
        return [float("nan")] * th.shape[-1]
    if th.dim() == 1:
        th = th[None].expand(len(e), -1)
    return (e[:, None] < th).to(torch.float64).mean(dim=0).tolist()


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: NaN and infinities become None."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
