"""The evaluation loop shared by `python -m vpog.evaluate` and the trainer's periodic validation.

Queries come as `vpog.data.VPOGBatch` (index 0 = the query crop; the batch's own templates, chosen
with the ground truth, are ignored): every object's full template set comes from an
`ObjectLibrary`. For each batch and object, every model in `models` estimates poses
(`inference.estimate_poses`), and the nearest-template baseline reuses the first model's retrieval.
Errors are computed per estimate (`scoring.pose_errors`) with MSPD in crop pixels against
thresholds scaled to the full image (`crop scale x image_width / 640`, as BOP's `w / 640`).

    evaluate_model(models, loader, library, ...) -> EvalResult(tables, tiles)     (report)
    PoseValidator(...).batch_values(model, batch) / .summarise(values)           (trainer)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from vpog.evaluation.inference import InferenceConfig, encode, estimate_poses
from vpog.evaluation.metrics import (
    ADD_THRESHOLD,
    RETRIEVAL_THRESHOLD_DEG,
    mspd_thresholds,
    mssd_thresholds,
)
from vpog.evaluation.objects import ObjectLibrary
from vpog.evaluation.plots import OverlayTile
from vpog.evaluation.scoring import COLUMNS, ErrorTable, pose_errors
from vpog.geometry import project, transform_points, viewing_direction

log = logging.getLogger(__name__)

VPOG = "vpog"
NEAREST_TEMPLATE = "nearest template"
UNTRAINED = "untrained vpog"


@dataclass
class EvalResult:
    """Per-method error tables (same queries, same order) and qualitative tiles."""

    tables: dict[str, ErrorTable]
    tiles: list[OverlayTile] = field(default_factory=list)


def _query(batch, device):
    """Query fields of a VPOGBatch (index 0 of the group axis) on `device`."""
    return (batch.images[:, 0].to(device), batch.masks[:, 0].to(device), batch.K[:, 0].to(device),
            batch.M[:, 0].to(device), batch.T_m2c[:, 0].to(device), batch.obj_id.tolist())


class _TokenCache:
    """Template encoder tokens of the last object, per model (templates are encoded once per object)."""

    def __init__(self):
        self.key, self.tokens = None, {}

    def get(self, name: str, model, obj_id: int, templates):
        if self.key != obj_id:
            self.key, self.tokens = obj_id, {}
        if name not in self.tokens:
            with torch.no_grad():
                self.tokens[name] = encode(model, templates.images)
        return self.tokens[name]


def evaluate_batch(models: Mapping[str, torch.nn.Module], batch, library: ObjectLibrary, cfg: InferenceConfig,
                   device, image_width: float = 640.0, nearest_template: bool = True,
                   cache: _TokenCache | None = None):
    """Errors of one batch -> ({method: rows (scoring.COLUMNS)}, {method: estimated poses [B, 4, 4]}).

    The first model's retrieval gives the nearest-template baseline (when `nearest_template`).
    Rows follow the batch order for every method.
    """
    if not models:
        raise ValueError("models must name at least one model")
    cache = cache or _TokenCache()
    images, masks, K, M, T_gt, obj_ids = _query(batch, device)
    B = len(obj_ids)
    names = list(models) + ([NEAREST_TEMPLATE] if nearest_template else [])
    rows = {n: {c: [None] * B for c in COLUMNS} for n in names}
    poses = {n: torch.zeros(B, 4, 4, device=device) for n in names}
    mspd_width = (M[:, 0, 0] * float(image_width)).double()
    for obj in sorted(set(obj_ids)):
        idx = torch.tensor([i for i, o in enumerate(obj_ids) if o == obj], device=device)
        templates = library.templates(obj, device)
        info = library.info(obj)
        pts = info.points.to(device)
        d_query = viewing_direction(T_gt[idx].double())
        first = None
        for name, model in models.items():
            tokens = cache.get(name, model, obj, templates)
            est = estimate_poses(model, images[idx], masks[idx], K[idx], templates, cfg, template_tokens=tokens)
            if first is None:
                first = est
            results = [(name, est.pose, est.template, est.valid)]
            if nearest_template and est is first:
                results.append((NEAREST_TEMPLATE, est.template_pose, est.template, None))
            for method, pose, tpl, valid in results:
                r = pose_errors(pose.double(), T_gt[idx].double(), pts, info.syms, info.diameter, K[idx].double(),
                                mspd_width[idx], d_pred=templates.dirs[tpl].double(), d_query=d_query,
                                valid=valid, obj_id=obj)
                for c in COLUMNS:
                    for j, i in enumerate(idx.tolist()):
                        rows[method][c][i] = r[c][j]
                poses[method][idx] = pose.float()
    return rows, poses


def _tile(image: torch.Tensor, points: torch.Tensor, K: torch.Tensor, T_est: torch.Tensor, T_gt: torch.Tensor,
          caption: str, max_points: int = 400) -> OverlayTile:
    step = max(1, len(points) // max_points)
    p = points[::step].float()
    uv_est = project(transform_points(T_est.float(), p), K.float(), z_min=1e-4)
    uv_gt = project(transform_points(T_gt.float(), p), K.float(), z_min=1e-4)
    img = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return OverlayTile(img, uv_est.cpu().numpy(), uv_gt.cpu().numpy(), caption)


def evaluate_model(models: Mapping[str, torch.nn.Module], loader: Iterable, library: ObjectLibrary,
                   cfg: InferenceConfig | None = None, device=None, image_width: float = 640.0,
                   nearest_template: bool = True, num_overlays: int = 16, max_batches: int | None = None,
                   objects: Iterable[int] | None = None, progress: bool = False) -> EvalResult:
    """Evaluate `models` ({method name: model}) on every batch of `loader` (VPOGBatch) -> EvalResult.

    objects: when given, queries of other objects are dropped (a loader replacing a broken sample
    by another instance could otherwise slip a training object in).
    Overlays show the first model's estimates: the first queries of each object, `num_overlays` in all.
    """
    allowed = None if objects is None else torch.tensor(sorted({int(o) for o in objects}))
    cfg = cfg or InferenceConfig()
    device = torch.device(device) if device is not None else torch.device("cpu")
    tables: dict[str, ErrorTable] = {}
    tiles: list[OverlayTile] = []
    per_obj_tiles: dict[int, int] = {}
    cache = _TokenCache()
    main = next(iter(models))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="evaluate", unit="query")
    for b, batch in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        if allowed is not None:
            keep = torch.isin(batch.obj_id.cpu(), allowed)
            if not bool(keep.all()):
                log.warning("dropping %d queries of objects outside the evaluated set", int((~keep).sum()))
                if not bool(keep.any()):
                    continue
                batch = select_queries(batch, keep)
        rows, poses = evaluate_batch(models, batch, library, cfg, device, image_width, nearest_template, cache)
        for method, r in rows.items():
            tables.setdefault(method, ErrorTable()).extend(r)
        if bar is not None:
            bar.update(len(batch.obj_id))
        for i, obj in enumerate(batch.obj_id.tolist()):
            quota = max(1, math.ceil(num_overlays / 4))
            if len(tiles) >= num_overlays or per_obj_tiles.get(obj, 0) >= quota:
                continue
            per_obj_tiles[obj] = per_obj_tiles.get(obj, 0) + 1
            info = library.info(obj)
            r = rows[main]
            caption = (f"obj {obj}: {main}\nR {r['rot_err_deg'][i]:.1f} deg, t {r['trans_err_mm'][i]:.0f} mm, "
                       f"MSSD {r['mssd_m'][i] / info.diameter:.2f} d")
            tiles.append(_tile(batch.images[i, 0], info.points, batch.K[i, 0], poses[main][i].cpu(),
                               batch.T_m2c[i, 0], caption))
    if bar is not None:
        bar.close()
    return EvalResult(tables=tables, tiles=tiles)


# --------------------------------------------------------------------------------------------
# Trainer validation


def per_estimate_values(rows: Mapping[str, list]) -> dict[str, torch.Tensor]:
    """Per-estimate numbers whose means / medians over any set of estimates give the summary:
    errors (median), ADD(-S) pass, per-estimate MSSD / MSPD recall over the BOP thresholds (mean = AR),
    retrieval pass, PnP fallback (1 where PnP gave no valid pose; NaN for a method without a solver).
    -> {name: [N] float64}."""
    t = ErrorTable(rows)
    diam = t.tensor("diameter_m")
    sym = torch.tensor(t.columns["symmetric"], dtype=torch.bool)
    add_s = torch.where(sym, t.tensor("adds_m"), t.tensor("add_m"))
    retr = t.tensor("retrieval_err_deg")
    return {
        "rot_err_deg": t.tensor("rot_err_deg"),
        "trans_err_mm": t.tensor("trans_err_mm"),
        "add_s_pass": (add_s < ADD_THRESHOLD * diam).double(),
        "mssd_recall": (t.tensor("mssd_m")[:, None] < mssd_thresholds(diam)).double().mean(1),
        "mspd_recall": (t.tensor("mspd_px")[:, None] < mspd_thresholds(t.tensor("mspd_width_px"))).double().mean(1),
        "retrieval_err_deg": retr,
        "retrieval_pass": (retr < RETRIEVAL_THRESHOLD_DEG).double(),
        "pnp_fallback": torch.tensor([float("nan") if v is None else float(not v) for v in t.columns["valid"]],
                                     dtype=torch.float64),
    }


VALIDATION_INFERENCE = {"num_candidates": 42, "refine_candidates": 8}  # 42 spread centres, then the best's 8


class PoseValidator:
    """Pose metrics for the trainer's validation (see `vpog.training.task.TrainTask.val_step`).

    `batch_values(model, batch)` returns per-sample 1-D tensors named `pose/<method>/<value>` (ranks
    concatenate them); `summarise(values)` reduces them to `pose/<method>/{ar, ar_mssd, ar_mspd,
    add_s_recall, rot_err_deg_median, trans_err_mm_median, retrieval_err_deg_median, retrieval_acc15}`,
    plus `pnp_fallback_rate` for methods with a solver (share of estimates that fell back to the
    nearest-template pose).
    `libraries` holds one `ObjectLibrary` per training source (`VPOGBatch.dataset_id` picks it).
    The default inference config searches coarse-to-fine (`VALIDATION_INFERENCE`), about 3x cheaper
    than scoring every template; pass an `InferenceConfig` to change it.
    """

    def __init__(self, libraries: list[ObjectLibrary], cfg: InferenceConfig | None = None,
                 image_width: float = 640.0, nearest_template: bool = True):
        self.libraries = list(libraries)
        self.cfg = cfg or InferenceConfig(**VALIDATION_INFERENCE)
        self.image_width = float(image_width)
        self.nearest_template = nearest_template

    @classmethod
    def from_dataset(cls, dataset, cfg: InferenceConfig | None = None, **kw) -> PoseValidator:
        """From a `vpog.data.VPOGDataset` (or an `ObjectSubset` of one): one library per source."""
        base = getattr(dataset, "base", dataset)
        return cls([ObjectLibrary(s) for s in base.sources], cfg, **kw)

    def batch_values(self, model, batch) -> dict[str, torch.Tensor]:
        device = batch.images.device
        out: dict[str, list] = {}
        for ds in sorted(set(batch.dataset_id.tolist())):
            sub = select_queries(batch, batch.dataset_id == ds)
            rows, _ = evaluate_batch({VPOG: model}, sub, self.libraries[ds], self.cfg, device, self.image_width,
                                     self.nearest_template)
            for method, r in rows.items():
                for k, v in per_estimate_values(r).items():
                    out.setdefault(f"pose/{method}/{k}", []).append(v)
        return {k: torch.cat(v).float() for k, v in out.items()}

    @staticmethod
    def summarise(values: Mapping[str, torch.Tensor]) -> dict[str, float]:
        methods = sorted({k.split("/")[1] for k in values if k.startswith("pose/")})
        out = {}
        for m in methods:
            v = {k.split("/")[2]: t.double() for k, t in values.items() if k.startswith(f"pose/{m}/")}
            mssd, mspd = float(v["mssd_recall"].mean()), float(v["mspd_recall"].mean())
            r = v["retrieval_err_deg"]
            out.update({
                f"pose/{m}/ar": (mssd + mspd) / 2, f"pose/{m}/ar_mssd": mssd, f"pose/{m}/ar_mspd": mspd,
                f"pose/{m}/add_s_recall": float(v["add_s_pass"].mean()),
                f"pose/{m}/rot_err_deg_median": float(v["rot_err_deg"].median()),
                f"pose/{m}/trans_err_mm_median": float(v["trans_err_mm"].median()),
                f"pose/{m}/retrieval_err_deg_median": float(r[~torch.isnan(r)].median()) if bool(
                    (~torch.isnan(r)).any()) else float("nan"),
                f"pose/{m}/retrieval_acc15": float(v["retrieval_pass"].mean()),
            })
            fb = v.get("pnp_fallback")
            if fb is not None and bool((~torch.isnan(fb)).any()):
                out[f"pose/{m}/pnp_fallback_rate"] = float(fb[~torch.isnan(fb)].mean())
        return out


def order_by_object(objects: np.ndarray, positions: np.ndarray, block: int | None = None) -> np.ndarray:
    """Positions (into `objects`, the object id of every instance) sorted by (object, position), so
    consecutive batches share an object's templates.

    block: interleave the objects in runs of `block` instances (object a's first `block`, then object
    b's first `block`, ..., then a's next `block`, ...), so that any prefix of the order, such as the
    first few validation batches, covers every object. None: each object's instances all together.
    """
    positions = np.asarray(positions, dtype=np.int64)
    objs = np.asarray(objects)[positions]
    order = np.lexsort((positions, objs))
    if block is None or len(order) == 0:
        return positions[order]
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    sorted_objs = objs[order]
    starts = np.r_[0, np.flatnonzero(sorted_objs[1:] != sorted_objs[:-1]) + 1]
    rank_in_object = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    run = rank_in_object // block
    return positions[order[np.lexsort((rank_in_object, sorted_objs, run))]]


def select_queries(batch, keep: torch.Tensor):
    """The queries of a VPOGBatch where `keep` [B] bool is True (a new VPOGBatch)."""
    from dataclasses import fields, replace

    from vpog.data.batch import TENSOR_FIELDS

    idx = keep.nonzero().flatten()
    kw = {f.name: getattr(batch, f.name)[idx.to(getattr(batch, f.name).device)] for f in fields(batch)
          if f.name in TENSOR_FIELDS}
    kw["keys"] = [batch.keys[i] for i in idx.tolist()] if batch.keys else []
    return replace(batch, **kw)
