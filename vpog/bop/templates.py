"""Render the templates of every object of a BOP dataset, in GigaPose's layout.

    python -m vpog.bop.templates dataset=bop_datasets/lmo out=bop_templates [template_level=1] [models=models]

writes `out/{name}/{obj_id:06d}/{view:06d}.png`, `_depth.png`, `out/{name}/object_poses/{obj_id:06d}.npy` and
`out/{name}/camera.json` (`vpog.data.templates`), name = the dataset folder's name. The BOP models
(PLY, millimetres, vertex colours or a texture) are rendered at true scale in metres with the renderer,
lighting and view poses that `vpog.data.synthesize` uses for training templates
(`vpog.data.template_render`). An object whose templates are complete is skipped, so an interrupted run
resumes; a model that cannot be loaded is reported and skipped (exit code 1 at the end).

Config: `vpog/config/bop_templates.yaml`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

_STATE: dict = {}


def _init_worker(settings: dict) -> None:
    from vpog.data.render import Renderer

    _STATE.clear()
    _STATE.update(settings=settings, renderer=Renderer())


def _close_worker() -> None:
    _STATE["renderer"].close()
    _STATE.clear()


def _render_one(task: tuple[int, str]) -> dict:
    """Render one object's templates -> {"id", "views", "seconds"} or {"id", "error"}."""
    from vpog.data.meshes import load_object
    from vpog.data.template_render import write_object_templates

    obj_id, path = task
    s = _STATE["settings"]
    t0 = time.perf_counter()
    try:
        obj = load_object(path, obj_id, max_extent=None, units="mm")  # BOP models are millimetres
        views = write_object_templates(_STATE["renderer"], obj, s["out"], s["name"], s["template_level"],
                                       s["width"], s["height"], lighting=s["template_lighting"],
                                       distance_factor=s["template_distance_factor"])
    except (ValueError, FileNotFoundError, OSError) as exc:
        return {"id": obj_id, "error": f"{type(exc).__name__}: {exc}"}
    return {"id": obj_id, "views": views, "seconds": time.perf_counter() - t0}


def render_templates(cfg) -> dict:
    """Render (or finish rendering) the templates of a BOP dataset; returns a summary dict."""
    from vpog.bop.dataset import read_models_info
    from vpog.data.render import EGL_HINT, RenderError, egl_available
    from vpog.data.render_pool import run_tasks
    from vpog.data.template_render import object_templates_done
    from vpog.data.templates import scaled_K, write_camera

    dataset = Path(str(cfg.dataset))
    if not dataset.is_dir():
        raise FileNotFoundError(f"dataset={dataset}: no such folder")
    models_dir = dataset / str(cfg.models)
    info = read_models_info(models_dir / "models_info.json")
    ids = sorted(info) if cfg.objects is None else sorted(int(i) for i in cfg.objects)
    unknown = sorted(set(ids) - set(info))
    if unknown:
        raise ValueError(f"objects={unknown} are not in {models_dir / 'models_info.json'} (objects: {sorted(info)})")
    name = str(cfg.name) if cfg.name is not None else dataset.name
    out = Path(str(cfg.out))
    width, height = (int(v) for v in cfg.template_size)
    settings = {"out": str(out), "name": name, "template_level": int(cfg.template_level), "width": width,
                "height": height, "template_lighting": str(cfg.template_lighting),
                "template_distance_factor": None if cfg.template_distance_factor is None
                else float(cfg.template_distance_factor)}
    manifest = out / name / "templates.json"
    if manifest.is_file():
        old = json.loads(manifest.read_text()).get("settings", {})
        changed = {k: (old.get(k), v) for k, v in settings.items() if k not in ("out",) and old.get(k) != v}
        if changed:
            raise ValueError(f"{out / name} was rendered with other settings {changed}; use another out or name")
    ok, reason = egl_available()
    if not ok:
        raise RenderError(f"{reason}; {EGL_HINT}")
    write_camera(out, name, scaled_K(width, height), width, height)
    manifest.write_text(json.dumps({"settings": settings, "dataset": str(dataset.resolve())}, indent=1))

    todo = [(i, str(models_dir / f"obj_{i:06d}.ply")) for i in ids if not object_templates_done(out, name, i)]
    log.info("templates of %s into %s: %d objects, %d done before, %d to render", dataset, out / name, len(ids),
             len(ids) - len(todo), len(todo))
    t0 = time.perf_counter()
    workers = min(int(cfg.num_workers), len(todo))
    results = run_tasks(_render_one, todo, workers, _init_worker, (settings,), _close_worker, "templates", "object",
                        progress=bool(cfg.progress))
    failed = {r["id"]: r["error"] for r in results if "error" in r}
    for obj_id, err in sorted(failed.items()):
        log.error("object %d: %s (skipped)", obj_id, err)
    views = sum(r.get("views", 0) for r in results)
    wall = time.perf_counter() - t0
    summary = {"objects": len(ids), "rendered": len(results) - len(failed), "skipped_done": len(ids) - len(todo),
               "failed": failed, "views": views, "seconds": round(wall, 2),
               "views_per_second": round(views / wall, 2) if wall > 0 and views else None,
               "templates": str(out / name)}
    return summary


def _report(cfg) -> int:
    summary = render_templates(cfg)
    log.info("done: %s", json.dumps(summary))
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    from vpog.cli import run_command
    from vpog.data.render import RenderError

    return run_command("bop_templates", argv, __doc__.split("\n\n")[0], _report, log, expected=(RenderError,))


if __name__ == "__main__":
    sys.exit(main())
