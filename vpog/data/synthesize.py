"""Synthesize a training set and its templates from any meshes, in the formats GigaPose trains from, and
optionally a BOP test split of the same objects.

    python -m vpog.data.synthesize out=DIR meshes=DIR|procedural num_objects=16 num_images=320 \
        template_level=1 seed=0 num_workers=2 [format=bop num_test_images=20 test_images_per_scene=10]

writes, under `out` (a training-set root, readable by `vpog.data.VPOGDataset` like MegaPose-GSO):

    train_pbr_web/shard-%06d.tar, key_to_shard.json     BOP-webdataset scenes as in GigaPose's MegaPose-GSO /
                                                        -ShapeNet release (see bop_writer.py)
    models_info.json                                    GigaPose/MegaPose list [{"obj_id", "label", "diameter"
                                                        (mm), ...BOP fields}], what GigaPose's loader iterates
    models/models_info.json, models/obj_%06d.ply        BOP dict {"<obj_id>": {"diameter": mm, ...}}, BOP models (mm)
    templates/{name}/...                                GigaPose templates (see templates.py)
    synthesis.json                                      the settings used, throughput measured, and how GigaPose
                                                        reads the set (`gigapose`), with format=bop also what the
                                                        test split holds (`bop`)

and with `format=bop` (default `gigapose`: the above only) also a test split in BOP's "scenes" layout, as
the BOP site ships test sets, readable by BOP tools and `vpog.bop` (see bop_scenes.py):

    test/{scene_id:06d}/scene_camera.json, scene_gt.json, scene_gt_info.json, rgb/{im_id:06d}.png,
        depth/{im_id:06d}.png (depth_mm = png * 0.1), mask/ and mask_visib/{im_id:06d}_{gt_id:06d}.png
    test_targets_bop19.json                             instances with visib_fract >= 0.1, per image and object
    camera.json                                         BOP's dataset camera {"cx", "cy", "depth_scale", "fx", ...}

`num_test_images` images of `image_size`, `test_images_per_scene` to a scene folder, each an independent
random scene like the training images (same scene settings) but drawn from other seeds, showing objects
from `test_object_ids` (null: all). The models are the set's `models/` (mm).

Scale: templates are rendered at true scale, in the same metric world as the scenes. GigaPose's own
GSO/ShapeNet templates are rendered 10 times larger and read with `scale_factor: 10`
(`configs/data/megapose.yaml`); for a synthesized set use `scale_factor: 1` (GigaPose or vpog's
`data.train_datasets[i].scale_factor`), with the template dir pointing at `templates/` (GigaPose adds the
set's name).

Objects come from a folder of meshes (obj, ply, glb/gltf, stl, off; ids 1..N in sorted file order) or
from `procedural` random primitive compositions; both are normalised as GSO (max extent 0.2 m) unless
`normalize=false`. Work is split into tasks (one per object: model + templates; one per shard: scenes;
one per test scene folder) run by `num_workers` processes, each with its own EGL context. Every task's
output appears atomically, so a rerun skips finished objects, shards and test scenes (resumable); every
image draws from a generator seeded by (seed, stream, image), training and test images from different
streams, so a set is the same whatever the worker count (deterministic for a seed).

A rerun into the same `out` must keep the settings that change what is written (`CONTENT_KEYS`), else it
is refused. The test settings count only between two `format=bop` runs: a `format=gigapose` run (the
trainer's) leaves an existing test split alone, and `format=bop` over a `gigapose` set adds the split.

Config: `vpog/config/synthesize.yaml`; the trainer calls `ensure_synthetic_dataset(cfg.data.synthesize)`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Settings that change what is written: a rerun into the same `out` must keep them.
TRAIN_KEYS = (
    "name", "meshes", "num_objects", "num_images", "images_per_shard", "image_size", "template_level",
    "template_size", "template_lighting", "template_distance_factor", "normalize", "max_extent", "mesh_units",
    "objects_per_image", "distractors_per_image", "occluder_prob", "apparent_size", "texture_prob", "seed",
)
# The BOP test split's settings and their defaults (configs and manifests older than the split lack them).
TEST_DEFAULTS = {"format": "gigapose", "num_test_images": 20, "test_images_per_scene": 10, "test_object_ids": None}
TEST_KEYS = tuple(TEST_DEFAULTS)
CONTENT_KEYS = TRAIN_KEYS + TEST_KEYS
FORMATS = ("gigapose", "bop")
TRAIN_STREAM, TEST_STREAM = 11, 23  # seed-sequence tags: training and test images never share a generator
WORK_DIR = ".vpog_synth"
MANIFEST = "synthesis.json"


def gigapose_reading(p: dict) -> dict:
    """The manifest's `gigapose` entry: GigaPose data-config values that read this set, and where its files are.

    GigaPose reads `{root_dir}/{dataset_name}/` and `{template_config.dir}/{dataset_name}/`, one name for
    both: with `out` named like the set (`.../{name}`), root_dir is out's parent and template_config.dir
    `{out}/templates`. Paths below are relative to `out`.
    """
    from .templates import NUM_VIEWS

    name, level = p["name"], int(p["template_level"])
    w, h = p["template_size"]
    return {
        "scale_factor": 1.0,
        "depth_scale": 10.0,
        "dataset_name": name,
        "level_templates": level,
        "num_templates": NUM_VIEWS[level],
        "pose_name": "object_poses/OBJECT_ID.npy",
        "models_info": "models_info.json (list of {obj_id, label, diameter (mm), ...} in id order)",
        "bop_models_info": "models/models_info.json (BOP dict keyed by str(obj_id), millimetres)",
        "shards": "train_pbr_web/shard-%06d.tar + key_to_shard.json (BOP-webdataset, depth_mm = png / 10)",
        "templates": f"templates/{name}/ (GigaPose layout, true scale: the same metres as the scenes)",
        "template_camera": f"templates/{name}/camera.json ({w}x{h}); GigaPose assumes its own K at 640x480",
    }


def bop_reading(p: dict, scenes: list[tuple[int, int]], targets: list[dict]) -> dict:
    """The manifest's `bop` entry (format=bop): what the BOP test split holds and where (paths relative to
    `out`, the BOP dataset root)."""
    from .bop_scenes import CAMERA_FILE, DEPTH_SCALE, MIN_VISIB_FRACT, SPLIT, TARGETS_FILE, VISIB_DELTA_MM

    return {
        "complete": True,
        "split": SPLIT,
        "scene_ids": [s for s, _ in scenes],
        "num_images": int(p["num_test_images"]),
        "images_per_scene": int(p["test_images_per_scene"]),
        "object_ids": p["test_object_ids"],
        "num_targets": len(targets),
        "targets": f"{TARGETS_FILE} (instances with visib_fract >= {MIN_VISIB_FRACT}, bop_toolkit's "
                   "enumerate_test_targets.py)",
        "scenes": f"{SPLIT}/{{scene_id:06d}}/ scene_camera.json, scene_gt.json (cam_t_m2c in mm), "
                  "scene_gt_info.json, rgb/{im_id:06d}.png, depth/{im_id:06d}.png, mask/ and "
                  "mask_visib/{im_id:06d}_{gt_id:06d}.png",
        "depth_scale": DEPTH_SCALE,
        "visib_delta_mm": VISIB_DELTA_MM,
        "camera": f"{CAMERA_FILE} ({p['image_size'][0]}x{p['image_size'][1]})",
        "models": "models/obj_{obj_id:06d}.ply (mm), models/models_info.json",
    }


def _plain(cfg) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:
        pass
    return dict(cfg)


def _validate(p: dict) -> dict:
    p = dict(p)
    for key, value in TEST_DEFAULTS.items():
        p.setdefault(key, value)
    if p["format"] not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {p['format']!r}")
    if p["format"] == "bop":
        for key in ("num_test_images", "test_images_per_scene"):
            if int(p[key]) < 1:
                raise ValueError(f"{key} must be >= 1, got {p[key]}")
        if int(p["test_images_per_scene"]) > 1_000_000:
            raise ValueError(f"test_images_per_scene must be at most 1000000 (6-digit image ids), "
                             f"got {p['test_images_per_scene']}")
    ids = p["test_object_ids"]
    if ids is not None:
        if isinstance(ids, (int, str)) or not len(ids) or any(isinstance(i, bool) or int(i) != i for i in ids):
            raise ValueError(f"test_object_ids must be null or a non-empty list of object ids, got {ids!r}")
        p["test_object_ids"] = sorted({int(i) for i in ids})
    if not p.get("out"):
        raise ValueError("out must name the output folder")
    for key in ("num_images", "images_per_shard"):
        if int(p[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {p[key]}")
    if p["template_level"] not in (0, 1, 2):
        raise ValueError(f"template_level must be 0, 1 or 2, got {p['template_level']}")
    for key in ("image_size", "template_size"):
        if len(p[key]) != 2 or min(p[key]) < 16:
            raise ValueError(f"{key} must be [width, height] of at least 16 pixels, got {p[key]}")
    lo, hi = p["objects_per_image"]
    if not 1 <= lo <= hi:
        raise ValueError(f"objects_per_image must be [low, high] with 1 <= low <= high, got {p['objects_per_image']}")
    if p["meshes"] == "procedural":
        if p["num_objects"] is None or int(p["num_objects"]) < 1:
            raise ValueError("num_objects must be >= 1 for procedural objects")
    return p


def _object_sources(p: dict) -> list[tuple[int, str | None]]:
    """[(obj_id, mesh path or None for procedural)], ids from 1."""
    if p["meshes"] == "procedural":
        return [(i + 1, None) for i in range(int(p["num_objects"]))]
    from .meshes import list_mesh_files

    files = list_mesh_files(p["meshes"])
    if p["num_objects"] is not None:
        files = files[: int(p["num_objects"])]
    return [(i + 1, str(f)) for i, f in enumerate(files)]


def _check_manifest(out: Path, p: dict) -> dict:
    """The manifest already in `out` ({} if none); ValueError if it was made with other content settings.

    Training keys must match. Test keys must match only when both runs write the test split
    (format=bop): a gigapose run keeps an existing split, a bop run over a gigapose set adds one.
    """
    path = out / MANIFEST
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text())
    old = {**TEST_DEFAULTS, **manifest.get("settings", {})}
    keys = TRAIN_KEYS + (TEST_KEYS if p["format"] == old["format"] == "bop" else ())
    diffs = [f"{k} (was {old.get(k)!r}, now {p.get(k)!r})" for k in keys if old.get(k) != p.get(k)]
    if diffs:
        raise ValueError(f"{out} was synthesized with other settings: {'; '.join(diffs)}. "
                         f"Delete it or choose another out= to make a new set")
    return manifest


def _test_layout(p: dict) -> list[tuple[int, int]]:
    """[(scene_id, number of images)] of the test split: `test_images_per_scene` a scene, the last one fewer."""
    n, per = int(p["num_test_images"]), int(p["test_images_per_scene"])
    return [(s, min(per, n - s * per)) for s in range(-(-n // per))]


# --------------------------------------------------------------------------------------------
# Tasks (run in worker processes)

_STATE: dict = {}


def _init_worker(p: dict, sources: list) -> None:
    from .render import Renderer

    _STATE.clear()
    _STATE.update(p=p, sources=dict(sources), renderer=Renderer(), objects=OrderedDict(), meshes={},
                  canvas_meshes={})


def _close_worker() -> None:
    _STATE["renderer"].close()
    _STATE.clear()


def _get_object(obj_id: int):
    from .meshes import load_object
    from .procedural import procedural_object

    objects, p = _STATE["objects"], _STATE["p"]
    if obj_id in objects:
        objects.move_to_end(obj_id)
        return objects[obj_id]
    src = _STATE["sources"][obj_id]
    max_extent = float(p["max_extent"]) if p["normalize"] else None
    if src is None:
        obj = procedural_object(obj_id, int(p["seed"]), max_extent=max_extent or 0.2,
                                texture_prob=float(p["texture_prob"]))
    else:
        obj = load_object(src, obj_id, max_extent=max_extent, units=p["mesh_units"])
    objects[obj_id] = obj
    if len(objects) > 64:  # keep memory bounded for large mesh folders
        old, _ = objects.popitem(last=False)
        _STATE["meshes"].pop(old, None)
        _STATE["canvas_meshes"].pop(old, None)
    return obj


def _object_task(obj_id: int) -> dict:
    from .bop_writer import models_info_entry, write_json_atomic, write_model_ply
    from .template_render import write_object_templates

    p, out = _STATE["p"], Path(_STATE["p"]["out"])
    obj = _get_object(obj_id)
    t0 = time.perf_counter()
    v, f, c = obj.colored_arrays()
    write_model_ply(out / "models" / f"obj_{obj_id:06d}.ply", v, f, c)
    w, h = p["template_size"]
    t_render = time.perf_counter()
    views = write_object_templates(_STATE["renderer"], obj, out / "templates", p["name"], int(p["template_level"]),
                                   w, h, lighting=p["template_lighting"],
                                   distance_factor=p["template_distance_factor"])
    t_render = time.perf_counter() - t_render
    info = models_info_entry(obj.vertices, obj.diameter, obj.symmetries)
    info["source"] = obj.name
    write_json_atomic(out / WORK_DIR / "objects" / f"obj_{obj_id:06d}.json", info)
    return {"kind": "object", "id": obj_id, "views": views, "seconds": time.perf_counter() - t0,
            "render_seconds": t_render}


def _scene_params(p: dict):
    from .scenes import SceneParams
    from .templates import scaled_K

    w, h = p["image_size"]
    return SceneParams(width=w, height=h, K=scaled_K(w, h), objects_per_image=tuple(p["objects_per_image"]),
                       distractors_per_image=tuple(p["distractors_per_image"]),
                       occluder_prob=float(p["occluder_prob"]), apparent_size=tuple(p["apparent_size"]),
                       texture_prob=float(p["texture_prob"]))


def _render_random_scene(rng: np.random.Generator, ids: list[int], key: str, params):
    """One random scene: objects_per_image of `ids` (drawn from `rng`), rendered -> ImageRecord."""
    from .scenes import render_scene

    k = int(rng.integers(params.objects_per_image[0], params.objects_per_image[1] + 1))
    chosen = rng.choice(ids, size=min(k, len(ids)), replace=False)
    objects = [_get_object(int(i)) for i in chosen]
    return render_scene(_STATE["renderer"], rng, key, objects, _STATE["meshes"], params)


def _shard_task(shard: int) -> dict:
    from .bop_writer import SHARD_DIR, SHARD_PATTERN, encode_image, image_key, write_shard

    p, out = _STATE["p"], Path(_STATE["p"]["out"])
    t0 = time.perf_counter()
    ids = sorted(_STATE["sources"])
    params = _scene_params(p)
    first = shard * int(p["images_per_shard"])
    last = min(first + int(p["images_per_shard"]), int(p["num_images"]))

    def samples():
        for index in range(first, last):
            rng = np.random.default_rng([int(p["seed"]), TRAIN_STREAM, index])
            key = image_key(index)
            yield key, encode_image(_render_random_scene(rng, ids, key, params))

    write_shard(out / SHARD_DIR / SHARD_PATTERN.format(shard), samples())
    return {"kind": "shard", "id": shard, "images": last - first, "seconds": time.perf_counter() - t0}


def _test_scene_task(scene_id: int) -> dict:
    """One BOP test scene folder: its images rendered, annotated as BOP's scripts do, written atomically."""
    from .bop_scenes import annotate, write_scene

    p, out = _STATE["p"], Path(_STATE["p"]["out"])
    t0 = time.perf_counter()
    ids = p["test_object_ids"] or sorted(_STATE["sources"])
    params = _scene_params(p)
    count = dict(_test_layout(p))[scene_id]
    images = {}
    for im_id in range(count):
        rng = np.random.default_rng([int(p["seed"]), TEST_STREAM, scene_id, im_id])
        record = _render_random_scene(rng, ids, f"{scene_id:06d}_{im_id:06d}", params)
        objects = {inst.obj_id: _get_object(inst.obj_id) for inst in record.instances}
        images[im_id] = annotate(record, _STATE["renderer"], objects, _STATE["meshes"], _STATE["canvas_meshes"])
    write_scene(out, scene_id, images, out / WORK_DIR / "test")
    return {"kind": "test_scene", "id": scene_id, "images": count, "seconds": time.perf_counter() - t0}


def _run_task(task: tuple[str, int]) -> dict:
    kind, ident = task
    return {"object": _object_task, "shard": _shard_task, "test_scene": _test_scene_task}[kind](ident)


# --------------------------------------------------------------------------------------------
# Driver


def _object_done(out: Path, name: str, obj_id: int) -> bool:
    from .templates import pose_path, template_dir

    return ((out / WORK_DIR / "objects" / f"obj_{obj_id:06d}.json").is_file()
            and pose_path(out / "templates", name, obj_id).is_file()
            and template_dir(out / "templates", name, obj_id).is_dir()
            and (out / "models" / f"obj_{obj_id:06d}.ply").is_file())


def synthesize(cfg) -> dict:
    """Write (or finish writing) the set described by `cfg` (synthesize.yaml keys); returns its manifest."""
    from . import bop_scenes
    from .bop_writer import (
        SHARD_DIR,
        SHARD_PATTERN,
        image_key,
        write_json_atomic,
        write_key_to_shard,
        write_models_info,
    )
    from .render import egl_available
    from .templates import scaled_K, write_camera

    p = _validate(_plain(cfg))
    out = Path(p["out"])
    out.mkdir(parents=True, exist_ok=True)
    p["out"] = str(out)
    previous = _check_manifest(out, p)
    sources = _object_sources(p)
    bop = p["format"] == "bop"
    if bop and p["test_object_ids"] is not None:
        unknown = sorted(set(p["test_object_ids"]) - {i for i, _ in sources})
        if unknown:
            raise ValueError(f"test_object_ids {unknown} are not objects of this set (ids 1..{len(sources)})")
    ok, reason = egl_available()
    if not ok:
        from .render import EGL_HINT, RenderError

        raise RenderError(f"{reason}; {EGL_HINT}")
    settings = {k: p[k] for k in CONTENT_KEYS}
    kept_bop = None
    if not bop and previous.get("settings", {}).get("format") == "bop":
        # a gigapose run leaves the test split written before as it is, and the manifest keeps describing it
        settings.update({k: previous["settings"][k] for k in TEST_KEYS})
        kept_bop = previous.get("bop")
    write_json_atomic(out / MANIFEST, {"settings": settings, "complete": False,
                                       **({"bop": kept_bop} if kept_bop else {})})
    tw, th = p["template_size"]
    write_camera(out / "templates", p["name"], scaled_K(tw, th), tw, th)

    n_shards = -(-int(p["num_images"]) // int(p["images_per_shard"]))
    scenes = _test_layout(p) if bop else []
    tasks = [("object", i) for i, _ in sources if not _object_done(out, p["name"], i)]
    tasks += [("shard", s) for s in range(n_shards) if not (out / SHARD_DIR / SHARD_PATTERN.format(s)).is_file()]
    tasks += [("test_scene", s) for s, _ in scenes if not bop_scenes.scene_done(out, s)]
    skipped = len(sources) + n_shards + len(scenes) - len(tasks)
    logger.info("synthesizing %s: %d objects, %d images in %d shards%s (%d tasks done before, %d to do)",
                out, len(sources), int(p["num_images"]), n_shards,
                f", {int(p['num_test_images'])} BOP test images in {len(scenes)} scenes" if bop else "",
                skipped, len(tasks))
    shutil.rmtree(out / WORK_DIR / "test", ignore_errors=True)  # scene folders left half-written by a crash

    from .render_pool import run_tasks

    t0 = time.perf_counter()
    workers = min(int(p["num_workers"]), len(tasks))
    results = run_tasks(_run_task, tasks, workers, _init_worker, (p, sources), _close_worker, "synthesize", "task",
                        progress=bool(p.get("progress", True)))
    wall = time.perf_counter() - t0

    infos = {}
    for obj_id, _ in sources:
        infos[obj_id] = json.loads((out / WORK_DIR / "objects" / f"obj_{obj_id:06d}.json").read_text())
    write_models_info(out, infos)
    ips = int(p["images_per_shard"])
    write_key_to_shard(out, {image_key(i): i // ips for i in range(int(p["num_images"]))})

    views = sum(r.get("views", 0) for r in results)
    view_seconds = sum(r.get("render_seconds", 0.0) for r in results)
    images = sum(r["images"] for r in results if r["kind"] == "shard")
    image_seconds = sum(r["seconds"] for r in results if r["kind"] == "shard")
    test_images = sum(r["images"] for r in results if r["kind"] == "test_scene")
    test_seconds = sum(r["seconds"] for r in results if r["kind"] == "test_scene")
    stats = {
        "wall_seconds": round(wall, 3),
        "workers": max(workers, 1),
        "template_views": views,
        "template_views_per_second_per_process": round(views / view_seconds, 2) if view_seconds else None,
        "scene_images": images,
        "scene_images_per_second_per_process": round(images / image_seconds, 3) if image_seconds else None,
        "test_images": test_images,
        "test_images_per_second_per_process": round(test_images / test_seconds, 3) if test_seconds else None,
        "views_per_second_wall": round((views + images + test_images) / wall, 2) if wall > 0 and results else None,
    }
    if results:
        logger.info("rendered %d template views (%.1f views/s per process), %d scene images "
                    "(%.2f images/s per process) and %d BOP test images (%.2f images/s per process) in %.1f s "
                    "with %d processes", views, stats["template_views_per_second_per_process"] or 0, images,
                    stats["scene_images_per_second_per_process"] or 0, test_images,
                    stats["test_images_per_second_per_process"] or 0, wall, stats["workers"])
    manifest = {"settings": settings, "complete": True, "stats": stats, "gigapose": gigapose_reading(p)}
    if bop:
        w, h = p["image_size"]
        bop_scenes.write_camera(out, scaled_K(w, h), w, h)
        targets = bop_scenes.write_targets(out, [s for s, _ in scenes])
        manifest["bop"] = bop_reading(p, scenes, targets)
    elif kept_bop:
        manifest["bop"] = kept_bop
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def ensure_synthetic_dataset(cfg, num_workers: int | None = None) -> Path:
    """Create the synthetic set of `cfg` (synthesize.yaml keys) unless it is already complete; returns its root.

    Idempotent and resumable: a complete set with the same settings returns at once, a partial one is
    finished, a set made with other settings raises ValueError (see `synthesize`).
    """
    p = _plain(cfg)
    if num_workers is not None:
        p["num_workers"] = num_workers
    out = Path(p["out"])
    manifest = out / MANIFEST
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        checked = _validate(p)
        _check_manifest(out, checked)
        if data.get("complete") and (checked["format"] != "bop" or (data.get("bop") or {}).get("complete")):
            return out
    synthesize(p)
    return out


def _report(cfg) -> int:
    manifest = synthesize(cfg)
    logger.info("done: %s", json.dumps(manifest["stats"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    from vpog.cli import run_command

    from .render import RenderError

    return run_command("synthesize", argv, __doc__.split("\n\n")[0], _report, logger, expected=(RenderError,))


if __name__ == "__main__":
    sys.exit(main())
