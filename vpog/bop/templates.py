"""Render the templates of every object of a BOP dataset, in GigaPose's layout.

    python -m vpog.bop.templates dataset=bop_datasets/lmo out=bop_templates [template_level=1] [models=models] \
        [num_workers=N] [shard=i/n] [verify=true]

writes `out/{name}/{obj_id:06d}/{view:06d}.png`, `_depth.png`, `out/{name}/object_poses/{obj_id:06d}.npy` and
`out/{name}/camera.json` (`vpog.data.templates`), name = the dataset folder's name. The BOP models
(PLY, millimetres, vertex colours or a texture) are rendered at true scale in metres with the renderer,
lighting and view poses that `vpog.data.synthesize` uses for training templates
(`vpog.data.template_render`), and run the same way: `num_workers` processes (one EGL context each,
spread over the GPUs), `shard=i/n` for the i-th of n runs (default: the SLURM array task's place;
`vpog.data.scale_out`), writing in background threads, a progress bar in views/s with the ETA and a
summary at the end. An object whose templates are complete (marker written last) is skipped, so an
interrupted run resumes and cleans up after itself; a model that cannot be used is reported with the
reason and skipped (exit code 1 at the end). `verify=true` renders nothing: it checks the rendered
templates (`vpog.data.template_verify`), writes `out/{name}/verify-{i}-of-{n}.json` and exits 1 when
something is missing, partial or corrupt (corrupt objects are redone by the next run).

Config: `vpog/config/bop_templates.yaml`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

log = logging.getLogger(__name__)

_STATE: dict = {}


def _init_worker(settings: dict) -> None:
    from vpog.data.render import Renderer
    from vpog.data.template_render import ViewWriter

    _STATE.clear()
    _STATE.update(settings=settings, renderer=Renderer(), writer=ViewWriter(settings["writer_threads"]))


def _close_worker() -> None:
    if _STATE:
        _STATE["writer"].close()
        _STATE["renderer"].close()
        _STATE.clear()


def _render_one(task: tuple[int, str]) -> dict:
    """Render one object's templates -> {"id", "views", "seconds", ...} or {"id", "skipped", "reason"}."""
    from vpog.data.meshes import BadMeshError, load_object
    from vpog.data.template_render import remove_leftovers, write_object_templates

    obj_id, path = task
    s = _STATE["settings"]
    t0 = time.perf_counter()
    remove_leftovers(s["out"], s["name"], obj_id)
    try:
        if not Path(path).is_file():
            raise BadMeshError("unreadable", f"model {path} does not exist")
        obj = load_object(path, obj_id, max_extent=None, units="mm",  # BOP models are millimetres
                          max_texture_pixels=s["max_texture_pixels"])
    except BadMeshError as exc:
        return {"id": obj_id, "skipped": exc.kind, "reason": str(exc), "views": 0}
    writer = _STATE["writer"]
    written = writer.seconds
    r = write_object_templates(_STATE["renderer"], obj, s["out"], s["name"], s["template_level"], s["width"],
                               s["height"], lighting=s["template_lighting"],
                               distance_factor=s["template_distance_factor"], writer=writer)
    return {"id": obj_id, "views": r["views"], "seconds": time.perf_counter() - t0,
            "render_seconds": r["render_seconds"], "write_seconds": writer.seconds - written}


def _crashed(task, reason: str) -> dict:
    return {"id": task[0], "skipped": "crash", "reason": reason, "views": 0}


def _settings(cfg) -> tuple[dict, Path, list[int], tuple[int, int]]:
    from vpog.bop.dataset import read_models_info
    from vpog.data.scale_out import parse_shard

    dataset = Path(str(cfg.dataset))
    if not dataset.is_dir():
        raise FileNotFoundError(f"dataset={dataset}: no such folder")
    models_dir = dataset / str(cfg.models)
    info = read_models_info(models_dir / "models_info.json")
    ids = sorted(info) if cfg.objects is None else sorted(int(i) for i in cfg.objects)
    unknown = sorted(set(ids) - set(info))
    if unknown:
        raise ValueError(f"objects={unknown} are not in {models_dir / 'models_info.json'} (objects: {sorted(info)})")
    for key, low in (("num_workers", 0), ("writer_threads", 0), ("max_texture_pixels", 1)):
        if int(cfg[key]) < low:
            raise ValueError(f"{key} must be >= {low}, got {cfg[key]}")
    name = str(cfg.name) if cfg.name is not None else dataset.name
    width, height = (int(v) for v in cfg.template_size)
    settings = {"out": str(cfg.out), "name": name, "template_level": int(cfg.template_level), "width": width,
                "height": height, "template_lighting": str(cfg.template_lighting),
                "template_distance_factor": None if cfg.template_distance_factor is None
                else float(cfg.template_distance_factor), "max_texture_pixels": int(cfg.max_texture_pixels),
                "writer_threads": int(cfg.writer_threads)}
    return settings, models_dir, ids, parse_shard(cfg.shard)


RUN_KEYS = ("out", "writer_threads")  # how a run goes, not what it writes: may differ between runs


def render_templates(cfg) -> dict:
    """Render (or finish rendering) the templates of a BOP dataset, or with `verify=true` check them;
    returns a summary dict (`failed` / `problems` non-empty: exit code 1)."""
    from vpog.data.bop_writer import write_json_atomic
    from vpog.data.render import EGL_HINT, RenderError, egl_available
    from vpog.data.render_pool import run_tasks
    from vpog.data.scale_out import shard_items
    from vpog.data.template_render import object_templates_done, sweep_partial
    from vpog.data.templates import NUM_VIEWS, scaled_K, write_camera

    settings, models_dir, ids, shard = _settings(cfg)
    out, name = Path(settings["out"]), settings["name"]
    manifest = out / name / "templates.json"
    if manifest.is_file():
        old = {"max_texture_pixels": settings["max_texture_pixels"], **json.loads(manifest.read_text()).get(
            "settings", {})}
        changed = {k: (old.get(k), v) for k, v in settings.items() if k not in RUN_KEYS and old.get(k) != v}
        if changed:
            raise ValueError(f"{out / name} was rendered with other settings {changed}; use another out or name")
    mine = shard_items(ids, shard)
    shard_text = f"{shard[0]}/{shard[1]}"
    if cfg.verify:
        return _verify(settings, out, name, mine, shard, int(cfg.num_workers), bool(cfg.progress))
    ok, reason = egl_available()
    if not ok:
        raise RenderError(f"{reason}; {EGL_HINT}")
    width, height = settings["width"], settings["height"]
    write_camera(out, name, scaled_K(width, height), width, height)
    write_json_atomic(manifest, {"settings": {k: v for k, v in settings.items() if k not in RUN_KEYS},
                                 "dataset": str(Path(str(cfg.dataset)).resolve())})

    todo = [(i, str(models_dir / f"obj_{i:06d}.ply")) for i in mine if not object_templates_done(out, name, i)]
    log.info("templates of %s into %s (shard %s): %d objects, %d in this shard, %d done before, %d to render",
             cfg.dataset, out / name, shard_text, len(ids), len(mine), len(mine) - len(todo), len(todo))
    t0 = time.perf_counter()
    workers = min(int(cfg.num_workers), len(todo))
    views_each = NUM_VIEWS[settings["template_level"]]
    results = run_tasks(_render_one, todo, workers, _init_worker, (settings,), _close_worker, "templates", "views",
                        progress=bool(cfg.progress), weight=lambda task: views_each, crashed=_crashed,
                        is_skipped=lambda r: "skipped" in r)
    sweep_partial(out, name, mine)
    wall = time.perf_counter() - t0
    failed = {r["id"]: f"{r['skipped']}: {r['reason']}" for r in results if "skipped" in r}
    done = [r for r in results if "skipped" not in r]
    views = sum(r["views"] for r in done)
    render_s, write_s = sum(r["render_seconds"] for r in done), sum(r["write_seconds"] for r in done)
    summary = {"objects": len(ids), "shard": shard_text, "objects_in_shard": len(mine), "rendered": len(done),
               "skipped_done": len(mine) - len(todo), "failed": failed,
               "failed_by_kind": dict(Counter(r["skipped"] for r in results if "skipped" in r)),
               "views": views, "seconds": round(wall, 2), "workers": max(workers, 1),
               "views_per_second": round(views / wall, 2) if wall > 0 and views else None,
               "views_per_second_per_process": round(views / render_s, 2) if render_s else None,
               "write_ms_per_view": round(1000 * write_s / views, 3) if views else None,
               "templates": str(out / name)}
    if results:
        log.info("rendered %d objects (%d views) in %.1f s with %d processes: %s views/s (%s per process, writing "
                 "%s ms/view in the background); %d done before, %d failed", len(done), views, wall,
                 summary["workers"], summary["views_per_second"], summary["views_per_second_per_process"],
                 summary["write_ms_per_view"], summary["skipped_done"], len(failed))
    for obj_id, err in sorted(failed.items()):
        log.error("object %d: %s (skipped)", obj_id, err)
    return summary


def _verify(settings: dict, out: Path, name: str, ids: list[int], shard: tuple[int, int], workers: int,
            progress: bool) -> dict:
    from vpog.data.bop_writer import write_json_atomic
    from vpog.data.template_verify import invalidate, verify_templates

    if not (out / name).is_dir():
        raise FileNotFoundError(f"{out / name} does not exist: nothing to verify")
    t0 = time.perf_counter()
    report = verify_templates(out, name, ids, settings["template_level"], settings["width"], settings["height"],
                              threads=max(workers, 1), progress=progress)
    invalidate(out, name, report["corrupt"])
    report["problems"] = len(report["missing"]) + len(report["partial"]) + len(report["corrupt"]) + len(
        report["debris"])
    report.update(shard=f"{shard[0]}/{shard[1]}", seconds=round(time.perf_counter() - t0, 2), failed={})
    write_json_atomic(out / name / f"verify-{shard[0]}-of-{shard[1]}.json", report)
    (log.warning if report["problems"] else log.info)(
        "verified %s (shard %d/%d) in %.1f s: %d objects ok, %d missing, %d partial, %d corrupt, %d leftovers of "
        "interrupted runs%s", out / name, *shard, report["seconds"], report["ok"], len(report["missing"]),
        len(report["partial"]), len(report["corrupt"]), len(report["debris"]),
        "; a rerun without verify redoes what is missing, partial or corrupt" if report["problems"] else "")
    for obj_id, reason in sorted(report["corrupt"].items()):
        log.warning("  object %d corrupt: %s", obj_id, reason)
    return report


def _report(cfg) -> int:
    summary = render_templates(cfg)
    log.info("done: %s", json.dumps(summary))
    return 1 if summary["failed"] or summary.get("problems") else 0


def main(argv: list[str] | None = None) -> int:
    from vpog.cli import run_command
    from vpog.data.render import RenderError

    return run_command("bop_templates", argv, __doc__.split("\n\n")[0], _report, log, expected=(RenderError,))


if __name__ == "__main__":
    sys.exit(main())
