"""Synthesize a training set and its templates from any meshes, in the formats GigaPose trains from, and
optionally a BOP test split of the same objects.

    python -m vpog.data.synthesize out=DIR meshes=DIR|procedural num_objects=16 num_images=320 \
        template_level=1 seed=0 num_workers=2 [shard=i/n] [verify=true] \
        [format=bop num_test_images=20 test_images_per_scene=10]

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
`normalize=false`. A mesh that cannot be used (unreadable, empty, non-finite, degenerate, a texture over
`max_texture_pixels`) is skipped: logged with the reason, counted in the summary, left out of
models_info.json and of the scenes; the run goes on (`synthesize_tasks`).

Scale: work is split into tasks (one per object: model + templates; one per shard: scenes; one per test
scene folder). `shard=i/n` takes every n-th of each kind from the i-th (default: the SLURM array task's
place, else the whole run; `scale_out`), so n runs on any nodes write one set; `num_workers` processes
share a run's tasks, each with its own EGL context, spread over the machine's GPUs (`render_pool`).
Template views are encoded and written in `writer_threads` background threads while the next views
render (`template_render`). A progress bar counts views (templates and images) with the rate and ETA;
a summary with totals and throughput ends the run (`stats` in the manifest).

Resumable and verifiable: every task's output appears atomically (an object's templates count only
with their marker, written last), so a rerun (or a requeued array task) skips finished objects, shards
and test scenes, redoes partial ones and removes what interrupted runs left. The run that finds every
task of the set finished (whichever shard) writes models_info.json, key_to_shard.json and the complete
manifest. `verify=true` renders nothing: it checks the finished set (every template file against its
marker and decoded, models, shards, test scenes), lists what is missing, partial or corrupt in
`.vpog_synth/verify-{i}-of-{n}.json`, and marks corrupt objects and shards for the next run to redo.
Every image draws from a generator seeded by (seed, stream, image), training and test images from
different streams, so a set is the same whatever the worker count or sharding (deterministic for a
seed).

A rerun into the same `out` must keep the settings that change what is written (`CONTENT_KEYS`), else it
is refused. The test settings count only between two `format=bop` runs: a `format=gigapose` run (the
trainer's) leaves an existing test split alone, and `format=bop` over a `gigapose` set adds the split.

Config: `vpog/config/synthesize.yaml`; the trainer calls `ensure_synthetic_dataset(cfg.data.synthesize)`.
"""

from __future__ import annotations

import json
import logging
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

from vpog.config_schema import to_plain

from .meshes import MAX_TEXTURE_PIXELS
from .synthesize_tasks import (
    TEST_STREAM,
    TRAIN_STREAM,
    WORK_DIR,
    mesh_stamp,
    read_status,
    status_path,
    test_layout,
)

logger = logging.getLogger(__name__)

__all__ = ["synthesize", "ensure_synthetic_dataset", "main", "CONTENT_KEYS", "TRAIN_STREAM", "TEST_STREAM"]

# Settings that change what is written: a rerun into the same `out` must keep them.
TRAIN_KEYS = (
    "name", "meshes", "num_objects", "num_images", "images_per_shard", "image_size", "template_level",
    "template_size", "template_lighting", "template_distance_factor", "normalize", "max_extent", "mesh_units",
    "objects_per_image", "distractors_per_image", "occluder_prob", "apparent_size", "texture_prob", "seed",
    "max_texture_pixels",
)
# The BOP test split's settings and their defaults (configs and manifests older than the split lack them).
TEST_DEFAULTS = {"format": "gigapose", "num_test_images": 20, "test_images_per_scene": 10, "test_object_ids": None}
TEST_KEYS = tuple(TEST_DEFAULTS)
CONTENT_KEYS = TRAIN_KEYS + TEST_KEYS
# Content settings newer than some manifests, with the value those sets were made with.
CONTENT_DEFAULTS = {"max_texture_pixels": MAX_TEXTURE_PIXELS, **TEST_DEFAULTS}
# How a run goes (not what it writes); defaults for configs that lack them (the trainer's data.synthesize).
RUN_DEFAULTS = {"num_workers": 2, "progress": True, "shard": None, "verify": False, "writer_threads": 1}
FORMATS = ("gigapose", "bop")
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


def _settings(cfg) -> dict:
    """The settings as a plain dict: a dict as it is (the loader's first-use check runs where omegaconf is not
    installed), a DictConfig through `to_plain`."""
    return dict(cfg) if isinstance(cfg, dict) else dict(to_plain(cfg))


def _validate(p: dict) -> dict:
    from .scale_out import parse_shard

    p = dict(p)
    for key, value in {**CONTENT_DEFAULTS, **RUN_DEFAULTS}.items():
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
    for key, low in (("num_images", 0), ("images_per_shard", 1), ("num_workers", 0), ("writer_threads", 0),
                     ("max_texture_pixels", 1)):
        if int(p[key]) < low:
            raise ValueError(f"{key} must be >= {low}, got {p[key]}")
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
    p["shard"] = "{}/{}".format(*parse_shard(p["shard"]))
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
    old = {**CONTENT_DEFAULTS, **manifest.get("settings", {})}
    keys = TRAIN_KEYS + (TEST_KEYS if p["format"] == old["format"] == "bop" else ())
    diffs = [f"{k} (was {old.get(k)!r}, now {p.get(k)!r})" for k in keys if old.get(k) != p.get(k)]
    if diffs:
        raise ValueError(f"{out} was synthesized with other settings: {'; '.join(diffs)}. "
                         f"Delete it or choose another out= to make a new set")
    return manifest


def _object_done(out: Path, name: str, obj_id: int, src: str | None) -> bool:
    """Finished: templates (with their marker), model and status written; or skipped as unusable, with its
    mesh file unchanged since."""
    from .template_render import object_templates_done

    status = read_status(out, obj_id)
    if status is None:
        return False
    if "skipped" in status:
        return status.get("mesh") == mesh_stamp(src)
    return object_templates_done(out / "templates", name, obj_id) and (out / "models" /
                                                                       f"obj_{obj_id:06d}.ply").is_file()


def _plan(out: Path, p: dict, sources: list, shard: tuple[int, int]) -> dict:
    """This shard's items of each kind (positions i, i + n, ...) and which of them are still to do."""
    from . import bop_scenes
    from .bop_writer import SHARD_DIR, SHARD_PATTERN
    from .scale_out import shard_items

    n_shards = -(-int(p["num_images"]) // int(p["images_per_shard"]))
    scenes = test_layout(p) if p["format"] == "bop" else []
    mine = {"object": shard_items(sources, shard), "shard": shard_items(range(n_shards), shard),
            "test_scene": shard_items([s for s, _ in scenes], shard)}
    todo = {"object": [i for i, src in mine["object"] if not _object_done(out, p["name"], i, src)],
            "shard": [s for s in mine["shard"] if not (out / SHARD_DIR / SHARD_PATTERN.format(s)).is_file()],
            "test_scene": [s for s in mine["test_scene"] if not bop_scenes.scene_done(out, s)]}
    return {"mine": mine, "todo": todo, "n_shards": n_shards, "scenes": scenes}


def _remove_tmp_files(out: Path, p: dict, plan: dict) -> None:
    """Delete what interrupted runs left of this shard's items (only this shard writes them)."""
    import shutil

    from .bop_writer import SHARD_DIR, SHARD_PATTERN

    paths = []
    for obj_id, _ in plan["mine"]["object"]:
        paths += list((out / "models").glob(f"obj_{obj_id:06d}.ply.tmp*"))
        paths += list((out / WORK_DIR / "objects").glob(f"obj_{obj_id:06d}.json.tmp*"))
    for s in plan["mine"]["shard"]:
        paths += list((out / SHARD_DIR).glob(SHARD_PATTERN.format(s) + ".tmp*"))
    for s in plan["mine"]["test_scene"]:
        paths += list((out / WORK_DIR / "test").glob(f"{s:06d}.tmp*"))
    for path in paths:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _task_weight(level: int, scenes: dict, images_per_shard: int, num_images: int):
    """Progress-bar share of a task: its template views or images."""
    from .templates import NUM_VIEWS

    def weight(task) -> int:
        kind, ident = task
        if kind == "object":
            return NUM_VIEWS[level]
        if kind == "shard":
            return min(images_per_shard, num_images - ident * images_per_shard)
        return scenes[ident]

    return weight


def _crashed(task, reason: str) -> dict:
    kind, ident = task
    return {"kind": kind, "id": ident, "skipped": "crash", "reason": reason, "views": 0, "images": 0}


def _stats(results: list, wall: float, workers: int, shard: str) -> dict:
    """Totals and throughput of one run (the manifest's `stats`)."""
    objects = [r for r in results if r["kind"] == "object"]
    done = [r for r in objects if "skipped" not in r]
    views = sum(r["views"] for r in done)
    render_s = sum(r["render_seconds"] for r in done)
    write_s = sum(r["write_seconds"] for r in done)
    shards = [r for r in results if r["kind"] == "shard" and "skipped" not in r]
    tests = [r for r in results if r["kind"] == "test_scene" and "skipped" not in r]
    images, image_s = sum(r["images"] for r in shards), sum(r["seconds"] for r in shards)
    test_images, test_s = sum(r["images"] for r in tests), sum(r["seconds"] for r in tests)
    skipped = {r["id"]: f"{r['skipped']}: {r['reason']}" for r in objects if "skipped" in r}
    return {
        "wall_seconds": round(wall, 3),
        "workers": max(workers, 1),
        "shard": shard,
        "objects_rendered": len(done),
        "objects_skipped": len(skipped),
        "skipped_by_kind": dict(Counter(r["skipped"] for r in objects if "skipped" in r)),
        "skipped_objects": skipped,
        "failed_tasks": {f"{r['kind']} {r['id']}": r["reason"] for r in results
                         if r["kind"] != "object" and "skipped" in r},
        "template_views": views,
        "template_views_per_second_per_process": round(views / render_s, 2) if render_s else None,
        "template_write_ms_per_view": round(1000 * write_s / views, 3) if views else None,
        "scene_images": images,
        "scene_images_per_second_per_process": round(images / image_s, 3) if image_s else None,
        "test_images": test_images,
        "test_images_per_second_per_process": round(test_images / test_s, 3) if test_s else None,
        "objects_left_out_of_scenes": sum(r.get("dropped_objects", 0) for r in results),
        "views_per_second_wall": round((views + images + test_images) / wall, 2) if wall > 0 and results else None,
    }


def _log_summary(stats: dict, todo: int, before: int) -> None:
    logger.info("shard %s: %d tasks done before, %d run in %.1f s with %d processes: %d objects rendered "
                "(%d template views, %s views/s per process, writing %s ms/view off the render thread), "
                "%d scene images, %d BOP test images; %s views/s overall", stats["shard"], before, todo,
                stats["wall_seconds"], stats["workers"], stats["objects_rendered"], stats["template_views"],
                stats["template_views_per_second_per_process"], stats["template_write_ms_per_view"],
                stats["scene_images"], stats["test_images"], stats["views_per_second_wall"])
    if stats["objects_skipped"]:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(stats["skipped_by_kind"].items()))
        logger.warning("%d objects skipped (%s):", stats["objects_skipped"], kinds)
        for obj_id, reason in sorted(stats["skipped_objects"].items())[:50]:
            logger.warning("  object %d: %s", obj_id, reason)
    for task, reason in stats["failed_tasks"].items():
        logger.error("%s: %s (not written; a rerun tries again)", task, reason)


def _complete(out: Path, p: dict, sources: list, n_shards: int, scenes: list) -> dict | None:
    """{obj_id: status} when every task of the whole set (all shards) is finished, else None."""
    from . import bop_scenes
    from .bop_writer import SHARD_DIR, SHARD_PATTERN

    statuses = {}
    for obj_id, src in sources:
        if not _object_done(out, p["name"], obj_id, src):
            return None
        statuses[obj_id] = read_status(out, obj_id)
    if not all((out / SHARD_DIR / SHARD_PATTERN.format(s)).is_file() for s in range(n_shards)):
        return None
    if not all(bop_scenes.scene_done(out, s) for s, _ in scenes):
        return None
    return statuses


def _finalize(out: Path, p: dict, settings: dict, statuses: dict, scenes: list, stats: dict, kept_bop) -> dict:
    from . import bop_scenes
    from .bop_writer import image_key, write_json_atomic, write_key_to_shard, write_models_info
    from .templates import scaled_K

    infos = {i: s for i, s in statuses.items() if "skipped" not in s}
    write_models_info(out, infos)
    ips = int(p["images_per_shard"])
    write_key_to_shard(out, {image_key(i): i // ips for i in range(int(p["num_images"]))})
    skipped = {i: f"{s['skipped']}: {s['reason']}" for i, s in statuses.items() if "skipped" in s}
    manifest = {"settings": settings, "complete": True, "stats": stats, "objects": len(infos),
                "skipped_objects": skipped, "gigapose": gigapose_reading(p)}
    if p["format"] == "bop":
        w, h = p["image_size"]
        bop_scenes.write_camera(out, scaled_K(w, h), w, h)
        targets = bop_scenes.write_targets(out, [s for s, _ in scenes])
        manifest["bop"] = bop_reading(p, scenes, targets)
    elif kept_bop:
        manifest["bop"] = kept_bop
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def synthesize(cfg) -> dict:
    """Write (or finish writing) the set described by `cfg` (synthesize.yaml keys), or with `verify=true`
    check it. Returns the manifest: `complete` once every shard's work is done, `stats` of this run
    (with `verify`: the verification report)."""
    from .render import EGL_HINT, RenderError, egl_available
    from .render_pool import run_tasks
    from .scale_out import parse_shard
    from .synthesize_tasks import close_worker, init_worker, run_task
    from .template_render import sweep_partial
    from .templates import scaled_K, write_camera

    p = _validate(_settings(cfg))
    out = Path(p["out"])
    shard = parse_shard(p["shard"])
    if p["verify"]:
        return verify_set(p)
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
        raise RenderError(f"{reason}; {EGL_HINT}")
    from .bop_writer import write_json_atomic

    settings = {k: p[k] for k in CONTENT_KEYS}
    kept_bop = None
    if not bop and previous.get("settings", {}).get("format") == "bop":
        # a gigapose run leaves the test split written before as it is, and the manifest keeps describing it
        settings.update({k: previous["settings"][k] for k in TEST_KEYS})
        kept_bop = previous.get("bop")
    if not previous.get("complete"):
        write_json_atomic(out / MANIFEST, {"settings": settings, "complete": False,
                                           **({"bop": kept_bop} if kept_bop else {})})
    tw, th = p["template_size"]
    write_camera(out / "templates", p["name"], scaled_K(tw, th), tw, th)

    plan = _plan(out, p, sources, shard)
    _remove_tmp_files(out, p, plan)
    todo = plan["todo"]
    tasks = [("object", i) for i in todo["object"]] + [("shard", s) for s in todo["shard"]]
    tasks += [("test_scene", s) for s in todo["test_scene"]]
    before = sum(len(v) for v in plan["mine"].values()) - len(tasks)
    logger.info("synthesizing %s (shard %s): %d objects, %d images in %d shards%s; this shard: %d tasks done "
                "before, %d to do", out, p["shard"], len(sources), int(p["num_images"]), plan["n_shards"],
                f", {int(p['num_test_images'])} BOP test images in {len(plan['scenes'])} scenes" if bop else "",
                before, len(tasks))

    t0 = time.perf_counter()
    workers = min(int(p["num_workers"]), len(tasks))
    weight = _task_weight(int(p["template_level"]), dict(plan["scenes"]), int(p["images_per_shard"]),
                          int(p["num_images"]))
    results = run_tasks(run_task, tasks, workers, init_worker, (p, sources), close_worker, "synthesize", "views",
                        progress=bool(p["progress"]), weight=weight, crashed=_crashed,
                        is_skipped=lambda r: "skipped" in r)
    source_of = dict(sources)
    for r in results:  # an object whose mesh kills its worker twice is unusable, as a bad mesh is
        if r["kind"] == "object" and r.get("skipped") == "crash":
            src = source_of[r["id"]]
            write_json_atomic(status_path(out, r["id"]), {"skipped": "crash", "reason": r["reason"],
                                                          "source": Path(src).name if src else None,
                                                          "mesh": mesh_stamp(src)})
    sweep_partial(out / "templates", p["name"], [i for i, _ in plan["mine"]["object"]])
    stats = _stats(results, time.perf_counter() - t0, workers, p["shard"])
    if results:
        _log_summary(stats, len(tasks), before)
    write_json_atomic(out / WORK_DIR / "runs" / f"shard-{shard[0]}-of-{shard[1]}.json", stats)

    statuses = _complete(out, p, sources, plan["n_shards"], plan["scenes"])
    if statuses is None:
        logger.info("shard %s finished; the set is complete once every shard is (the last to finish, or any "
                    "rerun then, writes models_info.json and the manifest)", p["shard"])
        return {"settings": settings, "complete": False, "stats": stats}
    if previous.get("complete") and not results:
        return {**previous, "stats": stats}
    return _finalize(out, p, settings, statuses, plan["scenes"], stats, kept_bop)


def _verify_shard_tar(path: Path, images: int) -> str | None:
    """None when the tar reads and holds `images` samples of 7 members, else what is wrong."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (OSError, tarfile.TarError, EOFError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    keys = {n.partition(".")[0] for n in names}
    if len(keys) != images or len(names) != 7 * images:
        return f"{len(keys)} samples in {len(names)} members, expected {images} in {7 * images}"
    return None


def verify_set(p: dict) -> dict:
    """Check the finished part of set `p` that shard p["shard"] owns (see the module doc) -> the report,
    also written to `.vpog_synth/verify-{i}-of-{n}.json`; corrupt objects lose their marker and corrupt
    shards are deleted, so the next run redoes them."""
    from . import bop_scenes
    from .bop_writer import SHARD_DIR, SHARD_PATTERN, write_json_atomic
    from .scale_out import parse_shard
    from .template_verify import invalidate, verify_templates

    out = Path(p["out"])
    if not (out / MANIFEST).is_file():
        raise FileNotFoundError(f"{out / MANIFEST} does not exist: nothing to verify at {out}")
    _check_manifest(out, p)
    shard = parse_shard(p["shard"])
    sources = _object_sources(p)
    plan = _plan(out, p, sources, shard)
    t0 = time.perf_counter()
    skipped = {}
    rendered = []
    for obj_id, src in plan["mine"]["object"]:
        status = read_status(out, obj_id)
        if status is not None and "skipped" in status and status.get("mesh") == mesh_stamp(src):
            skipped[obj_id] = f"{status['skipped']}: {status['reason']}"
        else:
            rendered.append(obj_id)
    w, h = p["template_size"]
    report = verify_templates(out / "templates", p["name"], rendered, int(p["template_level"]), w, h,
                              threads=max(int(p["num_workers"]), 1), progress=bool(p["progress"]))
    for obj_id in rendered:
        if obj_id in report["corrupt"] or obj_id in report["missing"] or obj_id in report["partial"]:
            continue
        ply = out / "models" / f"obj_{obj_id:06d}.ply"
        if read_status(out, obj_id) is None:
            report["partial"].append(obj_id)
            report["ok"] -= 1
        elif not ply.is_file() or ply.stat().st_size == 0:
            report["corrupt"][obj_id] = f"{ply}: missing or empty"
            report["ok"] -= 1
    invalidate(out / "templates", p["name"], report["corrupt"])
    shards = {}
    for s in plan["mine"]["shard"]:
        path = out / SHARD_DIR / SHARD_PATTERN.format(s)
        images = min(int(p["images_per_shard"]), int(p["num_images"]) - s * int(p["images_per_shard"]))
        problem = "missing" if not path.is_file() else _verify_shard_tar(path, images)
        if problem:
            shards[s] = problem
            if problem != "missing":
                path.unlink()
    scenes = [s for s in plan["mine"]["test_scene"] if not bop_scenes.scene_done(out, s)]
    report.update(shard=p["shard"], skipped_objects=skipped, bad_shards=shards, missing_test_scenes=scenes,
                  seconds=round(time.perf_counter() - t0, 2))
    report["problems"] = (len(report["missing"]) + len(report["partial"]) + len(report["corrupt"]) + len(shards)
                          + len(scenes) + len(report["debris"]))
    if report["problems"]:  # the set needs another run: the trainer must not take it as complete
        manifest = json.loads((out / MANIFEST).read_text())
        if manifest.get("complete"):
            write_json_atomic(out / MANIFEST, {**manifest, "complete": False})
    write_json_atomic(out / WORK_DIR / f"verify-{shard[0]}-of-{shard[1]}.json", report)
    log = logger.warning if report["problems"] else logger.info
    log("verified %s (shard %s) in %.1f s: %d objects ok, %d missing, %d partial, %d corrupt, %d skipped as "
        "unusable; %d bad training shards, %d missing test scenes, %d leftovers of interrupted runs%s",
        out, p["shard"], report["seconds"], report["ok"], len(report["missing"]), len(report["partial"]),
        len(report["corrupt"]), len(skipped), len(shards), len(scenes), len(report["debris"]),
        "; a rerun without verify redoes what is missing, partial or corrupt" if report["problems"] else "")
    for obj_id, reason in sorted(report["corrupt"].items())[:50]:
        logger.warning("  object %d corrupt: %s", obj_id, reason)
    return {"settings": {k: p[k] for k in CONTENT_KEYS}, "verify": report}


def ensure_synthetic_dataset(cfg, num_workers: int | None = None) -> Path:
    """Create the synthetic set of `cfg` (synthesize.yaml keys) unless it is already complete; returns its root.

    Idempotent and resumable: a complete set with the same settings returns at once, a partial one is
    finished, a set made with other settings raises ValueError (see `synthesize`). The whole set is made
    here (`shard=0/1`, also inside a SLURM array job).
    """
    p = _settings(cfg)
    if num_workers is not None:
        p["num_workers"] = num_workers
    p["shard"], p["verify"] = "0/1", False
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
    """Exit code: 0 done (or shard done), 1 when verify found problems or a task failed."""
    manifest = synthesize(cfg)
    if "verify" in manifest:
        return 1 if manifest["verify"]["problems"] else 0
    logger.info("done: %s", json.dumps({k: v for k, v in manifest["stats"].items() if k != "skipped_objects"}))
    return 1 if manifest["stats"]["failed_tasks"] else 0


def main(argv: list[str] | None = None) -> int:
    from vpog.cli import run_command

    from .render import RenderError

    return run_command("synthesize", argv, __doc__.split("\n\n")[0], _report, logger, expected=(RenderError,))


if __name__ == "__main__":
    sys.exit(main())
