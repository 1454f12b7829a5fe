"""BOP 2019 scores of pose estimates on a BOP dataset, computed as the BOP toolkit's `eval_bop19_pose.py` does.

The pipeline (6D localisation, the BOP 2019-2023 "core" task):

1. Targets come from the dataset's targets file: per image, `inst_count` instances of some objects.
   Estimates of images or objects that are not targets are ignored (counted). Per target, the
   `inst_count` estimates with the highest score are kept (n_top = -1; a stable sort, so equal scores
   keep file order) (eval_calc_errors.py l.340-374).
2. Each kept estimate gets its VSD (one value per tau), MSSD (mm) and MSPD (px) error against every
   ground-truth instance of its object in its image (eval_calc_errors.py l.378-566), with the toolkit's
   shortcuts: VSD = 1 when the two poses' bounding-sphere projections do not overlap, MSSD = inf when
   the centres are a diameter or more apart.
3. Valid ground truth (eval_calc_scores.py l.257-286): with visib_gt_min = -1 (the toolkit's
   default, eval_bop19_pose.py l.61) the `inst_count` most visible instances of each target object;
   with visib_gt_min >= 0 every instance of a target object with visib_fract >= visib_gt_min. Other
   instances are ignored: they are not counted and nothing can be matched to them.
4. For each error type, tau (VSD) and threshold: MSSD is divided by the diameter, MSPD multiplied by
   640 / image width (eval_calc_scores.py l.295-307), and per (image, object) estimates are matched
   greedily in decreasing score to the valid, not yet matched instance with the smallest error, when
   that error is below the threshold (pose_matching.match_poses l.9-92).
5. recall = matched valid instances / valid instances (score.calc_localization_scores l.69-165);
   AR_VSD = mean over taus x thresholds, AR_MSSD and AR_MSPD = mean over thresholds,
   AR = mean of the three (eval_bop19_pose.py l.225-266).

Thresholds (eval_bop19_pose.py l.26-58): VSD delta 15 mm (ITODD 5 mm), taus and correctness thresholds
0.05..0.5 step 0.05, MSSD 0.05..0.5 x diameter, MSPD 5..50 px step 5 x width / 640.

References: bop_toolkit (commit cea62d6) `scripts/eval_bop19_pose.py`, `scripts/eval_calc_errors.py`,
`scripts/eval_calc_scores.py`, `bop_toolkit_lib/pose_matching.py`, `bop_toolkit_lib/score.py`. Written from
those, not copied.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from vpog.bop.pose_error import (
    MAX_SYM_DISC_STEP,
    VSD_TAUS,
    DepthRenderer,
    Symmetries,
    depth_to_distance,
    mspd,
    mssd,
    sphere_projections_overlap,
    symmetry_transforms,
    vsd_delta_mm,
    vsd_from_distance,
)

logger = logging.getLogger(__name__)

ERROR_TYPES = ("vsd", "mssd", "mspd")
VSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))  # the toolkit's exact floats
MSSD_THRESHOLDS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))  # x diameter
MSPD_THRESHOLDS = tuple(float(x) for x in np.arange(5, 51, 5))  # px at a 640-pixel-wide image


@dataclass(kw_only=True)
class Bop19Config:
    """Parameters of the BOP 2019 evaluation; the defaults are the toolkit's."""

    vsd_delta_mm: float | None = None
    """VSD visibility tolerance, mm; None: the toolkit's per-dataset value (15, ITODD 5)."""
    vsd_taus: tuple[float, ...] = VSD_TAUS
    """VSD misalignment tolerances, x object diameter."""
    vsd_thresholds: tuple[float, ...] = VSD_THRESHOLDS
    mssd_thresholds: tuple[float, ...] = MSSD_THRESHOLDS
    """x object diameter."""
    mspd_thresholds: tuple[float, ...] = MSPD_THRESHOLDS
    """pixels, for a 640-pixel-wide image (errors are scaled by 640 / width)."""
    max_sym_disc_step: float = MAX_SYM_DISC_STEP
    visib_gt_min: float = -1.0
    """-1: the `inst_count` most visible instances of a target object count (toolkit default);
    >= 0: instances with visib_fract >= visib_gt_min count."""
    n_top: int = -1
    """estimates kept per target: -1 its inst_count, 0 all, k > 0 the best k."""
    pixels: str = "toolkit"
    """VSD rendering pixel convention, see `DepthRenderer`."""

    def __post_init__(self) -> None:
        for name in ("vsd_taus", "vsd_thresholds", "mssd_thresholds", "mspd_thresholds"):
            values = tuple(float(v) for v in getattr(self, name))
            if not values or not all(v > 0 and math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive numbers, got {values}")
            setattr(self, name, values)
        if self.vsd_delta_mm is not None and not self.vsd_delta_mm > 0:
            raise ValueError(f"vsd_delta_mm must be > 0 (mm) or None, got {self.vsd_delta_mm}")
        if not self.max_sym_disc_step > 0:
            raise ValueError(f"max_sym_disc_step must be > 0, got {self.max_sym_disc_step}")
        if self.visib_gt_min != -1 and not 0 <= self.visib_gt_min <= 1:
            raise ValueError(f"visib_gt_min must be -1 or in [0, 1], got {self.visib_gt_min}")
        if self.n_top < -1:
            raise ValueError(f"n_top must be -1, 0 or positive, got {self.n_top}")
        if self.pixels not in ("toolkit", "centre"):
            raise ValueError(f"pixels must be 'toolkit' or 'centre', got {self.pixels!r}")


# --------------------------------------------------------------------------------------------
# Errors per target


@dataclass
class EstimateErrors:
    """Errors of one kept estimate against each ground-truth instance of its object in its image."""

    row: int
    """position of the estimate in the results list (file order, 0-based)."""
    scene_id: int
    im_id: int
    obj_id: int
    score: float
    vsd: np.ndarray
    """[G, T] in [0, 1], one column per tau."""
    mssd: np.ndarray
    """[G] millimetres (inf: the centres are a diameter or more apart, not computed)."""
    mspd: np.ndarray
    """[G] pixels."""


@dataclass
class TargetErrors:
    """One target (image, object): its ground-truth instances and the errors of its kept estimates."""

    scene_id: int
    im_id: int
    obj_id: int
    inst_count: int
    gt_ids: np.ndarray
    """[G] int: indices in the image's scene_gt.json of the instances of this object."""
    gt_valid: np.ndarray
    """[G] bool: the instances that count (see visib_gt_min)."""
    diameter_mm: float
    image_width: int
    estimates: list[EstimateErrors] = field(default_factory=list)
    """best score first."""

    def errors(self, error_type: str, tau_index: int = 0) -> np.ndarray:
        """Normalised errors [E, G], as thresholded: VSD as is, MSSD / diameter, MSPD x 640 / width."""
        G = len(self.gt_ids)
        if not self.estimates:
            return np.zeros((0, G))
        if error_type == "vsd":
            return np.stack([e.vsd[:, tau_index] for e in self.estimates]).reshape(-1, G)
        if error_type == "mssd":
            return np.stack([e.mssd for e in self.estimates]).reshape(-1, G) / self.diameter_mm
        if error_type == "mspd":
            return (640.0 / self.image_width) * np.stack([e.mspd for e in self.estimates]).reshape(-1, G)
        raise ValueError(f"error_type must be one of {ERROR_TYPES}, got {error_type!r}")

    @property
    def scores(self) -> np.ndarray:
        return np.array([e.score for e in self.estimates], dtype=np.float64)


def top_indices(scores: Sequence[float], n: int | None) -> list[int]:
    """Indices of the `n` highest `scores`, best first; equal scores keep their order (a stable sort, as the
    toolkit's `sorted(..., reverse=True)`, eval_calc_errors.py l.367-373). n None: all."""
    return sorted(range(len(scores)), key=lambda i: -float(scores[i]))[:n]


def valid_gt_mask(gt_obj_ids: Sequence[int], gt_visib: Sequence[float | None], im_targets: dict[int, int],
                  visib_gt_min: float = -1.0) -> np.ndarray:
    """Which ground-truth instances of an image count, bool [G] (eval_calc_scores.py l.257-286).

    gt_obj_ids, gt_visib: object id and visib_fract (None: unknown, taken as fully visible) of each instance
    in scene_gt.json order; im_targets: {obj_id: inst_count} of the image. visib_gt_min -1: per target
    object the inst_count most visible instances (ties: lower index first); >= 0: target objects' instances
    with visib_fract >= visib_gt_min.
    """
    if len(gt_obj_ids) != len(gt_visib):
        raise ValueError(f"gt_obj_ids and gt_visib must have the same length, got {len(gt_obj_ids)} and "
                         f"{len(gt_visib)}")
    visib = [1.0 if v is None else float(v) for v in gt_visib]
    valid = np.zeros(len(gt_obj_ids), dtype=bool)
    if visib_gt_min >= 0:
        for i, (o, v) in enumerate(zip(gt_obj_ids, visib)):
            valid[i] = int(o) in im_targets and v >= visib_gt_min
        return valid
    left = dict(im_targets)
    for i in sorted(range(len(gt_obj_ids)), key=lambda i: -visib[i]):  # stable: ties by index
        o = int(gt_obj_ids[i])
        if left.get(o, 0) > 0:
            valid[i] = True
            left[o] -= 1
    return valid


def match_greedy(errors: np.ndarray, scores: np.ndarray, threshold: float, gt_valid: np.ndarray | None = None,
                 max_estimates: int = 0) -> np.ndarray:
    """Greedy matching of estimates to ground-truth instances (pose_matching.match_poses l.9-92).

    errors [E, G] (normalised, NaN = never), scores [E], gt_valid [G] bool (None: all). In decreasing score
    (ties: lower index first; only the best `max_estimates` when > 0), each estimate takes the valid,
    still unmatched instance with the smallest error (ties: lower index), if that error is < threshold.
    -> [E] int: the matched instance's column, -1 for none.
    """
    errors = np.asarray(errors, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if errors.ndim != 2 or errors.shape[0] != len(scores):
        raise ValueError(f"errors must have shape [E, G] with E = len(scores) = {len(scores)}, got {errors.shape}")
    G = errors.shape[1]
    free = np.ones(G, dtype=bool) if gt_valid is None else np.asarray(gt_valid, dtype=bool).copy()
    if free.shape != (G,):
        raise ValueError(f"gt_valid must have shape [G] = [{G}], got {free.shape}")
    order = top_indices(scores, max_estimates if max_estimates > 0 else None)
    matched = np.full(len(scores), -1, dtype=np.int64)
    for i in order:
        cand = np.where(free & (errors[i] < threshold), errors[i], np.inf)
        if G and np.isfinite(cand).any():
            j = int(np.argmin(cand))
            matched[i] = j
            free[j] = False
    return matched


def count_matches(targets: Sequence[TargetErrors], error_type: str, threshold: float, tau_index: int = 0,
                  n_top: int = -1) -> tuple[dict[int, int], dict[int, int]]:
    """True positives and counted instances per object at one threshold -> ({obj: tp}, {obj: instances}).

    Instances counted per target: its valid ones (n_top > 0: at most n_top) (score.calc_localization_scores
    l.84-116)."""
    tps: dict[int, int] = {}
    counted: dict[int, int] = {}
    for tg in targets:
        n_valid = int(tg.gt_valid.sum())
        counted[tg.obj_id] = counted.get(tg.obj_id, 0) + (min(n_top, n_valid) if n_top > 0 else n_valid)
        if tg.estimates and n_valid:
            m = match_greedy(tg.errors(error_type, tau_index), tg.scores, threshold, tg.gt_valid,
                             max_estimates=max(n_top, 0))
            tps[tg.obj_id] = tps.get(tg.obj_id, 0) + int((m >= 0).sum())
        else:
            tps.setdefault(tg.obj_id, 0)
    return tps, counted


# --------------------------------------------------------------------------------------------
# Scores


@dataclass
class Bop19Scores:
    """Result of `evaluate_bop19`. Recalls are fractions in [0, 1]."""

    average_recall: float
    average_recall_vsd: float
    average_recall_mssd: float
    average_recall_mspd: float
    average_time_per_image: float
    """seconds, mean over the result file's images; -1 when a row has no time (as the toolkit)."""
    recalls: dict[str, list]
    """"vsd": [taus][thresholds], "mssd", "mspd": [thresholds]."""
    per_object: dict[int, dict]
    """obj_id -> {"instances", "ar", "ar_vsd", "ar_mssd", "ar_mspd"} for objects with counted instances."""
    counts: dict[str, int]
    problems: list[str]
    config: Bop19Config
    targets: list[TargetErrors] = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        """A JSON-ready dict with the toolkit's key names (scores_bop19.json) and the details."""
        def num(x: float):
            return float(x) if math.isfinite(x) else None

        estimates = []
        for tg in self.targets:
            for e in tg.estimates:
                estimates.append({
                    "row": e.row, "scene_id": e.scene_id, "im_id": e.im_id, "obj_id": e.obj_id, "score": e.score,
                    "errors": {str(int(g)): {"vsd": [num(v) for v in e.vsd[k]], "mssd": num(e.mssd[k]),
                                             "mspd": num(e.mspd[k])} for k, g in enumerate(tg.gt_ids)}})
        return {
            "bop19_average_recall": self.average_recall,
            "bop19_average_recall_vsd": self.average_recall_vsd,
            "bop19_average_recall_mssd": self.average_recall_mssd,
            "bop19_average_recall_mspd": self.average_recall_mspd,
            "bop19_average_time_per_image": self.average_time_per_image,
            "recalls": self.recalls,
            "per_object": {str(o): v for o, v in self.per_object.items()},
            "counts": self.counts,
            "problems": self.problems,
            "config": asdict(self.config),
            "estimates": estimates,
        }

    def summary(self) -> str:
        """A few readable lines: AR and its parts, the counts that explain them, problems."""
        c = self.counts
        lines = [f"BOP19 AR {self.average_recall:.4f}  (VSD {self.average_recall_vsd:.4f}, "
                 f"MSSD {self.average_recall_mssd:.4f}, MSPD {self.average_recall_mspd:.4f})",
                 f"targets: {c['targets']} in {c['target_images']} images; ground-truth instances counted "
                 f"{c['gt_counted']}, ignored {c['gt_ignored']}",
                 f"estimates: {c['estimates']} rows, {c['estimates_evaluated']} evaluated, "
                 f"{c['estimates_not_target']} not for a target, {c['estimates_beyond_top_n']} beyond the top "
                 f"inst_count; {c['target_images_without_estimates']} target images without any estimate, "
                 f"{c['target_instances_missing']} target instances without an estimate"]
        if self.average_time_per_image >= 0:
            lines.append(f"average time per image: {self.average_time_per_image:.3f} s")
        if self.per_object:
            lines.append("per object AR: " + ", ".join(f"{o}: {v['ar']:.3f}" for o, v in self.per_object.items()))
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


def scores_from_targets(targets: Sequence[TargetErrors], config: Bop19Config | None = None) -> dict:
    """Recalls and average recalls from per-target errors -> {"recalls", "ar_<type>", "ar", "per_object"}.

    A recall with no counted instance is 0 (score.calc_recall)."""
    config = config or Bop19Config()
    settings = {"vsd": [(k, th) for k in range(len(config.vsd_taus)) for th in config.vsd_thresholds],
                "mssd": [(0, th) for th in config.mssd_thresholds],
                "mspd": [(0, th) for th in config.mspd_thresholds]}
    recalls: dict[str, list[float]] = {}
    obj_recalls: dict[str, dict[int, list[float]]] = {}
    instances: dict[int, int] = {}
    for err, pairs in settings.items():
        recalls[err], obj_recalls[err] = [], {}
        for tau_index, th in pairs:
            tps, counted = count_matches(targets, err, th, tau_index, config.n_top)
            total = sum(counted.values())
            recalls[err].append(sum(tps.values()) / total if total else 0.0)
            for o, n in counted.items():
                obj_recalls[err].setdefault(o, []).append(tps.get(o, 0) / n if n else 0.0)
            instances = counted
    ar = {err: float(np.mean(r)) for err, r in recalls.items()}
    per_object = {}
    for o in sorted(instances):
        if instances[o] == 0:
            continue
        parts = {err: float(np.mean(obj_recalls[err][o])) for err in ERROR_TYPES}
        per_object[o] = {"instances": instances[o], "ar": float(np.mean(list(parts.values()))),
                         **{f"ar_{err}": v for err, v in parts.items()}}
    n_tau, n_th = len(config.vsd_taus), len(config.vsd_thresholds)
    return {"recalls": {"vsd": np.asarray(recalls["vsd"]).reshape(n_tau, n_th).tolist(), "mssd": recalls["mssd"],
                        "mspd": recalls["mspd"]},
            **{f"ar_{err}": v for err, v in ar.items()}, "ar": float(np.mean(list(ar.values()))),
            "per_object": per_object}


# --------------------------------------------------------------------------------------------
# The evaluation


class _ErrorCalculator:
    """Errors of the kept estimates of one image; caches symmetries and the image's ground-truth renders."""

    def __init__(self, dataset, config: Bop19Config, renderer: DepthRenderer):
        self.dataset = dataset
        self.config = config
        self.renderer = renderer
        self.delta = config.vsd_delta_mm if config.vsd_delta_mm is not None else vsd_delta_mm(dataset.name)
        self._syms: dict[int, Symmetries] = {}

    def syms(self, obj_id: int) -> Symmetries:
        if obj_id not in self._syms:
            self._syms[obj_id] = symmetry_transforms(self.dataset.models_info[obj_id], self.config.max_sym_disc_step)
        return self._syms[obj_id]

    def image(self, scene_id: int, im_id: int, gts: list, kept: dict[int, list], gt_valid: np.ndarray,
              im_targets: dict[int, int]) -> list[TargetErrors]:
        """TargetErrors of each target object of an image; kept: obj_id -> [(row, PoseResult)] best first."""
        ds, cfg = self.dataset, self.config
        K = ds.camera(scene_id, im_id).K
        dist_test = None  # distance images (mm): the test depth's, and the renders of the ground truth
        width = None
        dist_gt: dict[int, np.ndarray] = {}
        out = []
        for obj_id, inst_count in im_targets.items():
            cols = np.array([k for k, g in enumerate(gts) if g.obj_id == obj_id], dtype=np.int64)
            diameter = ds.diameter_mm(obj_id)
            scored = len(cols) > 0 and bool(kept.get(obj_id))
            if scored and dist_test is None:
                dist_test = depth_to_distance(ds.depth_mm(scene_id, im_id), K)
            if width is None:
                width = self._width(scene_id, im_id, dist_test)
            tg = TargetErrors(scene_id, im_id, obj_id, inst_count, np.array([gts[k].index for k in cols], np.int64),
                              gt_valid[cols] if len(cols) else np.zeros(0, bool), diameter, width)
            if scored:
                pts = ds.model_points(obj_id, eval=True)
                syms = self.syms(obj_id)
                h, w = dist_test.shape
                for row, est in kept[obj_id]:
                    dist_est = None
                    vsd_e = np.ones((len(cols), len(cfg.vsd_taus)))
                    mssd_e = np.full(len(cols), np.inf)
                    mspd_e = np.empty(len(cols))
                    for j, k in enumerate(cols):
                        g = gts[k]
                        # eval_calc_errors.py l.394-416: VSD = 1 without rendering when the bounding-sphere
                        # projections do not overlap; l.407-412, 452-455: MSSD = inf when the centres are a
                        # diameter or more apart.
                        if sphere_projections_overlap(0.5 * diameter, est.t, g.t):
                            if dist_est is None:
                                dist_est = depth_to_distance(self.renderer.render(obj_id, est.R, est.t, K, w, h), K)
                            if k not in dist_gt:
                                dist_gt[k] = depth_to_distance(self.renderer.render(obj_id, g.R, g.t, K, w, h), K)
                            vsd_e[j] = vsd_from_distance(dist_test, dist_est, dist_gt[k], self.delta, cfg.vsd_taus,
                                                         diameter, normalized_by_diameter=True)
                        if np.linalg.norm(est.t - g.t) < diameter:
                            mssd_e[j] = mssd(est.R, est.t, g.R, g.t, pts, syms)
                        mspd_e[j] = mspd(est.R, est.t, g.R, g.t, K, pts, syms)
                    tg.estimates.append(EstimateErrors(row, scene_id, im_id, obj_id, float(est.score), vsd_e, mssd_e,
                                                       mspd_e))
            out.append(tg)
        return out

    def _width(self, scene_id: int, im_id: int, depth: np.ndarray | None) -> int:
        try:
            return int(self.dataset.image_size(scene_id, im_id)[0])
        except FileNotFoundError:  # no rgb/gray image: the depth image has the same size
            d = depth if depth is not None else self.dataset.depth_mm(scene_id, im_id)
            return int(d.shape[1])


def _top_n(config: Bop19Config, inst_count: int) -> int | None:
    if config.n_top == -1:
        return inst_count
    return None if config.n_top == 0 else config.n_top


def evaluate_bop19(dataset, results: Sequence, config: Bop19Config | None = None,
                   renderer: DepthRenderer | None = None, progress: bool = False) -> Bop19Scores:
    """Score `results` (PoseResult list, BOP units) on `dataset` (a `vpog.bop.dataset.BopDataset` with ground
    truth) as the BOP 2019 toolkit does. renderer: the VSD depth renderer (default: a `DepthRenderer` on the
    dataset's evaluation models, closed at the end); progress: a tqdm bar over the target images."""
    from vpog.bop.results import check_results

    config = config or Bop19Config()
    check = check_results(list(results))
    targets_by_image: dict[tuple[int, int], dict[int, int]] = {}
    for t in dataset.targets():
        targets_by_image.setdefault((int(t.scene_id), int(t.im_id)), {})[int(t.obj_id)] = int(t.inst_count)
    by_target: dict[tuple[int, int, int], list] = {}
    not_target = 0
    for row, r in enumerate(results):
        im_targets = targets_by_image.get((int(r.scene_id), int(r.im_id)))
        if im_targets is None or int(r.obj_id) not in im_targets:
            not_target += 1
            continue
        by_target.setdefault((int(r.scene_id), int(r.im_id), int(r.obj_id)), []).append((row, r))

    own_renderer = renderer is None
    if own_renderer:
        renderer = DepthRenderer(dataset.eval_model_path, pixels=config.pixels)
    calc = _ErrorCalculator(dataset, config, renderer)
    counts = dict(estimates=len(results), estimates_not_target=not_target, estimates_beyond_top_n=0,
                  estimates_evaluated=0, targets=sum(len(v) for v in targets_by_image.values()),
                  target_images=len(targets_by_image), target_images_without_estimates=0,
                  target_instances_missing=0, gt_in_target_images=0, gt_counted=0, gt_ignored=0,
                  gt_without_visib_fract=0, duplicate_rows=check.duplicates,
                  images_with_inconsistent_times=len(check.inconsistent_times))
    all_targets: list[TargetErrors] = []
    images = sorted(targets_by_image)
    try:
        from tqdm import tqdm

        for scene_id, im_id in tqdm(images, desc="BOP19 errors", unit="image", disable=not progress):
            im_targets = targets_by_image[(scene_id, im_id)]
            gts = dataset.gt(scene_id, im_id)
            valid = valid_gt_mask([g.obj_id for g in gts], [g.visib_fract for g in gts], im_targets,
                                  config.visib_gt_min)
            counts["gt_in_target_images"] += len(gts)
            counts["gt_counted"] += int(valid.sum())
            counts["gt_without_visib_fract"] += sum(g.visib_fract is None for g in gts)
            kept: dict[int, list] = {}
            for obj_id, inst_count in im_targets.items():
                ests = by_target.get((scene_id, im_id, obj_id), [])
                kept[obj_id] = [ests[i] for i in top_indices([r.score for _, r in ests], _top_n(config, inst_count))]
                counts["estimates_beyond_top_n"] += len(ests) - len(kept[obj_id])
                counts["estimates_evaluated"] += len(kept[obj_id])
                counts["target_instances_missing"] += max(0, inst_count - len(ests))
            if not any(kept.values()):
                counts["target_images_without_estimates"] += 1
            all_targets += calc.image(scene_id, im_id, gts, kept, valid, im_targets)
    finally:
        if own_renderer:
            renderer.close()
    counts["gt_ignored"] = counts["gt_in_target_images"] - counts["gt_counted"]
    if counts["gt_without_visib_fract"]:
        logger.warning("%d ground-truth instances have no visib_fract (no scene_gt_info.json): taken as fully "
                       "visible", counts["gt_without_visib_fract"])

    s = scores_from_targets(all_targets, config)
    problems = list(check.problems)
    if not check.ok:
        problems.append("the BOP toolkit would reject this results file (see the problems above)")
    times: dict[tuple[int, int], float] = {}
    for r in results:
        times.setdefault((int(r.scene_id), int(r.im_id)), float(r.time))
    avg_time = float(np.mean(list(times.values()))) if check.times_available and times else -1.0
    return Bop19Scores(average_recall=s["ar"], average_recall_vsd=s["ar_vsd"], average_recall_mssd=s["ar_mssd"],
                       average_recall_mspd=s["ar_mspd"], average_time_per_image=avg_time, recalls=s["recalls"],
                       per_object=s["per_object"], counts=counts, problems=problems, config=config,
                       targets=all_targets)
