"""The tasks of `vpog.data.synthesize`, run in render worker processes (or in the driver's, num_workers=0).

One task is one object (its model PLY, templates and models_info entry), one training shard, or one BOP
test scene folder. Each worker holds a renderer (one EGL context), a `ViewWriter` (template encoding and
writes in a background thread) and a bounded cache of loaded objects.

An object whose mesh cannot be used (`meshes.BadMeshError`) is skipped: its task writes a status file
saying why instead of its outputs, and scenes that draw it leave it out (drawing again only when every
object drawn is unusable), so the images of a set without bad meshes are those of earlier versions.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TRAIN_STREAM, TEST_STREAM = 11, 23  # seed-sequence tags: training and test images never share a generator
WORK_DIR = ".vpog_synth"
CACHE_OBJECTS = 64  # loaded objects kept per worker (memory stays bounded for large mesh folders)

_STATE: dict = {}


def status_path(out: Path, obj_id: int) -> Path:
    """The object's status file: its models_info entry when done, {"skipped": kind, ...} when unusable."""
    return Path(out) / WORK_DIR / "objects" / f"obj_{int(obj_id):06d}.json"


def mesh_stamp(src: str | None) -> list | None:
    """[size, mtime_ns] of a mesh file (None for procedural objects): a skipped object is retried when its
    file changes."""
    if src is None:
        return None
    st = Path(src).stat()
    return [st.st_size, st.st_mtime_ns]


def init_worker(p: dict, sources: list) -> None:
    from .render import Renderer
    from .template_render import ViewWriter

    _STATE.clear()
    _STATE.update(p=p, sources=dict(sources), renderer=Renderer(), writer=ViewWriter(int(p["writer_threads"])),
                  objects=OrderedDict(), bad={}, meshes={}, canvas_meshes={})


def close_worker() -> None:
    if _STATE:
        _STATE["writer"].close()
        _STATE["renderer"].close()
        _STATE.clear()


def get_object(obj_id: int):
    """The worker's ObjectModel of `obj_id` (loaded once, cached); BadMeshError when it is unusable."""
    from .meshes import BadMeshError, check_parts, load_object
    from .procedural import procedural_object

    objects, p = _STATE["objects"], _STATE["p"]
    if obj_id in _STATE["bad"]:
        raise _STATE["bad"][obj_id]
    if obj_id in objects:
        objects.move_to_end(obj_id)
        return objects[obj_id]
    src = _STATE["sources"][obj_id]
    max_extent = float(p["max_extent"]) if p["normalize"] else None
    limit = int(p["max_texture_pixels"])
    try:
        if src is None:
            obj = procedural_object(obj_id, int(p["seed"]), max_extent=max_extent or 0.2,
                                    texture_prob=float(p["texture_prob"]))
            check_parts(obj.parts, obj.name, limit)
        else:
            obj = load_object(src, obj_id, max_extent=max_extent, units=p["mesh_units"], max_texture_pixels=limit)
    except BadMeshError as exc:
        _STATE["bad"][obj_id] = exc
        raise
    objects[obj_id] = obj
    if len(objects) > CACHE_OBJECTS:
        old, _ = objects.popitem(last=False)
        _STATE["meshes"].pop(old, None)
        _STATE["canvas_meshes"].pop(old, None)
    return obj


def _usable(obj_id: int):
    from .meshes import BadMeshError

    try:
        return get_object(obj_id)
    except BadMeshError:
        return None


def object_task(obj_id: int) -> dict:
    from .bop_writer import models_info_entry, write_json_atomic, write_model_ply
    from .meshes import BadMeshError
    from .template_render import remove_leftovers, write_object_templates

    p, out = _STATE["p"], Path(_STATE["p"]["out"])
    t0 = time.perf_counter()
    remove_leftovers(out / "templates", p["name"], obj_id)
    src = _STATE["sources"][obj_id]
    try:
        obj = get_object(obj_id)
    except BadMeshError as exc:
        write_json_atomic(status_path(out, obj_id), {"skipped": exc.kind, "reason": str(exc),
                                                     "source": Path(src).name if src else None,
                                                     "mesh": mesh_stamp(src)})
        return {"kind": "object", "id": obj_id, "skipped": exc.kind, "reason": str(exc), "views": 0,
                "seconds": time.perf_counter() - t0}
    v, f, c = obj.colored_arrays()
    write_model_ply(out / "models" / f"obj_{obj_id:06d}.ply", v, f, c)
    w, h = p["template_size"]
    writer = _STATE["writer"]
    written = writer.seconds
    r = write_object_templates(_STATE["renderer"], obj, out / "templates", p["name"], int(p["template_level"]), w, h,
                               lighting=p["template_lighting"], distance_factor=p["template_distance_factor"],
                               writer=writer)
    info = models_info_entry(obj.vertices, obj.diameter, obj.symmetries)
    info["source"] = obj.name
    write_json_atomic(status_path(out, obj_id), info)
    return {"kind": "object", "id": obj_id, "views": r["views"], "seconds": time.perf_counter() - t0,
            "render_seconds": r["render_seconds"], "write_seconds": writer.seconds - written}


def scene_params(p: dict):
    from .scenes import SceneParams
    from .templates import scaled_K

    w, h = p["image_size"]
    return SceneParams(width=w, height=h, K=scaled_K(w, h), objects_per_image=tuple(p["objects_per_image"]),
                       distractors_per_image=tuple(p["distractors_per_image"]),
                       occluder_prob=float(p["occluder_prob"]), apparent_size=tuple(p["apparent_size"]),
                       texture_prob=float(p["texture_prob"]))


def _scene_objects(rng: np.random.Generator, ids: list[int], params) -> tuple[list, int]:
    """(objects_per_image of `ids` drawn from `rng`, usable ones only; how many drawn were unusable).

    Draws again, one object at a time, only when every object drawn is unusable; ValueError when none
    of `ids` is usable."""
    k = int(rng.integers(params.objects_per_image[0], params.objects_per_image[1] + 1))
    chosen = [int(i) for i in rng.choice(ids, size=min(k, len(ids)), replace=False)]
    objects = [o for o in map(_usable, chosen) if o is not None]
    tried = set(chosen)
    while not objects:
        if tried >= set(ids):
            raise ValueError(f"no usable object among {len(ids)} (every mesh was skipped; see the log)")
        extra = int(rng.choice(ids))
        tried.add(extra)
        obj = _usable(extra)
        chosen.append(extra)
        objects = [obj] if obj is not None else []
    return objects, len(chosen) - len(objects)


def render_random_scene(rng: np.random.Generator, ids: list[int], key: str, params):
    """One random scene of objects drawn from `ids` -> (ImageRecord, unusable objects left out)."""
    from .scenes import render_scene

    objects, dropped = _scene_objects(rng, ids, params)
    return render_scene(_STATE["renderer"], rng, key, objects, _STATE["meshes"], params), dropped


def shard_task(shard: int) -> dict:
    from .bop_writer import SHARD_DIR, SHARD_PATTERN, encode_image, image_key, write_shard

    p, out = _STATE["p"], Path(_STATE["p"]["out"])
    t0 = time.perf_counter()
    ids = sorted(_STATE["sources"])
    params = scene_params(p)
    first = shard * int(p["images_per_shard"])
    last = min(first + int(p["images_per_shard"]), int(p["num_images"]))
    dropped = 0

    def samples():
        nonlocal dropped
        for index in range(first, last):
            rng = np.random.default_rng([int(p["seed"]), TRAIN_STREAM, index])
            key = image_key(index)
            record, n = render_random_scene(rng, ids, key, params)
            dropped += n
            yield key, encode_image(record)

    write_shard(out / SHARD_DIR / SHARD_PATTERN.format(shard), samples())
    return {"kind": "shard", "id": shard, "images": last - first, "dropped_objects": dropped,
            "seconds": time.perf_counter() - t0}


def test_layout(p: dict) -> list[tuple[int, int]]:
    """[(scene_id, number of images)] of the test split: `test_images_per_scene` a scene, the last one fewer."""
    n, per = int(p["num_test_images"]), int(p["test_images_per_scene"])
    return [(s, min(per, n - s * per)) for s in range(-(-n // per))]


def test_scene_task(scene_id: int) -> dict:
    """One BOP test scene folder: its images rendered, annotated as BOP's scripts do, written atomically."""
    from .bop_scenes import annotate, write_scene

    p, out = _STATE["p"], Path(_STATE["p"]["out"])
    t0 = time.perf_counter()
    ids = p["test_object_ids"] or sorted(_STATE["sources"])
    params = scene_params(p)
    count = dict(test_layout(p))[scene_id]
    images, dropped = {}, 0
    for im_id in range(count):
        rng = np.random.default_rng([int(p["seed"]), TEST_STREAM, scene_id, im_id])
        record, n = render_random_scene(rng, ids, f"{scene_id:06d}_{im_id:06d}", params)
        dropped += n
        objects = {inst.obj_id: get_object(inst.obj_id) for inst in record.instances}
        images[im_id] = annotate(record, _STATE["renderer"], objects, _STATE["meshes"], _STATE["canvas_meshes"])
    write_scene(out, scene_id, images, out / WORK_DIR / "test")
    return {"kind": "test_scene", "id": scene_id, "images": count, "dropped_objects": dropped,
            "seconds": time.perf_counter() - t0}


def run_task(task: tuple[str, int]) -> dict:
    kind, ident = task
    return {"object": object_task, "shard": shard_task, "test_scene": test_scene_task}[kind](ident)


def read_status(out: Path, obj_id: int) -> dict | None:
    """The object's status file content (None when absent or unreadable: not done)."""
    path = status_path(out, obj_id)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
