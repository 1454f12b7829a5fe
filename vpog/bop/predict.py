"""Estimate the poses of a BOP split's targets and write them as a BOP19 results CSV.

    python -m vpog.bop.predict checkpoint=outputs/run dataset=bop_datasets/lmo templates=bop_templates \
        detections=cnos-fastsam_lmo-test.json out=bop_results machine.device=cuda

For each target image (`test_targets_bop19.json`): the `inst_count` best detections of each target
object (the detections file's, or, without one, the ground-truth visible boxes and masks: "oracle
detections", said in the log and the summary), crop, template retrieval, flow and PnP
(`vpog.PoseEstimator`), one row per estimate in `out/{method}_{dataset}-{split}.csv` (`vpog.bop.results`):
R row-major, t in millimetres, `time` the seconds spent on the image (plus the detector's time for it
with add_detection_time), the same on every row of the image. Rerunning with the same `out` continues
after the last finished image. An image that fails is logged with its ids, left out of the CSV and
counted; detections of objects without templates and empty masks are skipped and counted. The counts,
the throughput and the settings go to `out/{method}_{dataset}-{split}.summary.json`.

Config: `vpog/config/bop_predict.yaml`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from vpog.config_schema import from_mapping, to_plain

log = logging.getLogger(__name__)

ORACLE = "oracle (ground-truth visible boxes and masks)"


def predict(cfg) -> dict:
    """Run the predictions of a composed `bop_predict` config; returns the summary dict."""
    import torch

    from vpog._backend import set_default_backend
    from vpog.bop.dataset import BopDataset
    from vpog.bop.detections import DetectionsFile, oracle_detections, select_for_targets
    from vpog.bop.results import PoseResult, ResultsWriter, result_filename
    from vpog.estimator import PoseEstimator
    from vpog.evaluation.inference import InferenceConfig

    set_default_backend(str(cfg.ops.backend))
    dataset = BopDataset(str(cfg.dataset), split=str(cfg.split), targets=cfg.targets)
    images = dataset.target_images()
    if not images:
        raise ValueError(f"{dataset.targets_file or dataset.split_dir}: no targets to estimate")
    if cfg.max_images is not None:
        images = images[: int(cfg.max_images)]
    detections = DetectionsFile(str(cfg.detections)) if cfg.detections is not None else None
    source = str(Path(str(cfg.detections)).name) if detections is not None else ORACLE
    if detections is None:
        log.warning("no detections file: using %s; these results are not comparable with a detector's", ORACLE)
    inference = from_mapping(InferenceConfig, cfg.inference, "inference")
    estimator = PoseEstimator.from_checkpoint(cfg.checkpoint, device=str(cfg.machine.device),
                                              model=to_plain(cfg.model), inference=inference, seed=int(cfg.seed))
    name = str(cfg.template_name) if cfg.template_name is not None else dataset.name
    estimator.set_templates(str(cfg.templates), name)
    target_objects = sorted({t.obj_id for _, _, ts in images for t in ts})
    without = [o for o in target_objects if not estimator.has_templates(o)]
    if without:
        log.warning("objects %s have no templates in %s: their targets stay empty (run vpog.bop.templates)",
                    without, Path(str(cfg.templates)) / name)

    out = Path(str(cfg.out))
    path = out / result_filename(str(cfg.method), dataset.name, dataset.split)
    counts: Counter = Counter()
    failed: list[dict] = []
    t_start = time.perf_counter()
    with ResultsWriter(path) as writer:
        todo = [im for im in images if (im[0], im[1]) not in writer.done]
        if len(todo) < len(images):
            log.info("%s holds %d finished images: continuing with the other %d", path, len(images) - len(todo),
                     len(todo))
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(images), initial=len(images) - len(todo), desc="predict", unit="image")
        try:
            for scene_id, im_id, targets in todo:
                t0 = time.perf_counter()
                try:
                    rgb = dataset.rgb(scene_id, im_id)
                    cam = dataset.camera(scene_id, im_id)
                    found = (detections.image(scene_id, im_id) if detections is not None
                             else oracle_detections(dataset, scene_id, im_id))
                    chosen = select_for_targets(found, targets)
                    estimates = estimator.estimate(rgb, cam.K, chosen)
                except Exception as exc:  # one bad image must not end the run: log it with its ids, count it
                    log.error("scene %d image %d failed: %s: %s", scene_id, im_id, type(exc).__name__, exc)
                    failed.append({"scene_id": scene_id, "im_id": im_id, "error": f"{type(exc).__name__}: {exc}"})
                    if bar is not None:
                        bar.update(1)
                    continue
                elapsed = time.perf_counter() - t0
                if detections is not None and bool(cfg.add_detection_time):
                    elapsed += detections.time(scene_id, im_id)
                rows = [PoseResult(scene_id, im_id, e.obj_id, e.score, e.R, e.t * 1000.0, elapsed)
                        for e in estimates if e.skipped is None]
                writer.add_image(scene_id, im_id, rows)
                counts["images"] += 1
                counts["targets"] += sum(t.inst_count for t in targets)
                counts["detections_used"] += len(chosen)
                counts["estimates"] += len(rows)
                counts["pnp_fallbacks"] += sum(1 for e in estimates if e.skipped is None and not e.pnp_valid)
                for e in estimates:
                    if e.skipped is not None:
                        counts[f"skipped_{e.skipped}"] += 1
                counts["targets_without_detection"] += sum(
                    max(0, t.inst_count - sum(1 for d in chosen if d.obj_id == t.obj_id)) for t in targets)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    wall = time.perf_counter() - t_start
    device = estimator.device
    summary = {
        "results": str(path), "dataset": str(dataset.root), "split": dataset.split, "method": str(cfg.method),
        "detections": source, "oracle_detections": detections is None,
        "checkpoint": None if cfg.checkpoint is None else str(cfg.checkpoint),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "target_images": len(images), "images_done_before": len(images) - len(todo),
        "images_estimated": counts["images"], "images_failed": len(failed), "failed": failed[:50],
        "counts": dict(counts), "objects_without_templates": without, "seconds": round(wall, 3),
        "images_per_second": round(counts["images"] / wall, 4) if wall > 0 and counts["images"] else None,
    }
    summary_path = path.with_suffix(".summary.json")
    summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def _report(cfg) -> int:
    summary = predict(cfg)
    c = summary["counts"]
    log.info("%d images (%s images/s on %s), %d estimates for %d targets; detections: %s; failed images: %d; "
             "skipped detections: %s -> %s", summary["images_estimated"], summary["images_per_second"],
             summary["device"], c.get("estimates", 0), c.get("targets", 0), summary["detections"],
             summary["images_failed"], {k: v for k, v in c.items() if k.startswith("skipped_")} or "none",
             summary["results"])
    return 1 if summary["images_failed"] else 0


def main(argv: list[str] | None = None) -> int:
    from vpog.cli import run_command

    return run_command("bop_predict", argv, __doc__.split("\n\n")[0], _report, log)


if __name__ == "__main__":
    sys.exit(main())
