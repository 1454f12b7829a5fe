"""Render and write one object's GigaPose templates (the layout of `vpog.data.templates`), resumably.

Shared by `vpog.data.synthesize` (training sets) and `vpog.bop.templates` (BOP objects), so templates
of unseen test objects are rendered exactly as those the model was trained with: the same renderer,
lighting, camera and view poses.

Writing is off the critical path: a `ViewWriter` encodes (`templates.encode_view`) and writes each view
in a background thread while the renderer draws the next one (encoding and file writes release the GIL).

An object's templates count as done only when its marker `{name}/{obj_id:06d}/.done.json` exists. The
views are written under `{name}/.partial/{obj_id:06d}.{host}-{pid}/` (hidden, never next to finished
objects), the pose file is replaced atomically, then the folder is renamed to `{name}/{obj_id:06d}/`
and the marker, holding every file's size and CRC-32 (what `template_verify` checks), is written last.
A rerun redoes an object without a marker and first removes what an interrupted run left of it (its
`.partial` folder, a pose file being written, the `{obj_id:06d}.tmpPID` folders of older vpog versions).

Needs pyrender (the `render` extra).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .bop_writer import write_json_atomic, writer_token
from .templates import fit_distance, object_template_poses, pose_path, save_view, scaled_K, template_dir

PARTIAL_DIR = ".partial"
DONE_FILE = ".done.json"
MARKER_VERSION = 1


def template_distance(radius_m: float, diameter_m: float, K: np.ndarray, width: int, height: int,
                      distance_factor: float | None) -> float:
    """Camera distance of the templates, metres: `distance_factor` x diameter (GigaPose: 1.0), or, with
    None, the distance at which the object's bounding sphere fits in view (`templates.fit_distance`)."""
    if distance_factor is None:
        return fit_distance(radius_m, K, width, height)
    return float(distance_factor) * float(diameter_m)


def done_marker(root: str | Path, name: str, obj_id: int) -> Path:
    return template_dir(root, name, obj_id) / DONE_FILE


def object_templates_done(root: str | Path, name: str, obj_id: int) -> bool:
    """Whether an object's templates are complete: its marker (written last) and its pose file exist."""
    return done_marker(root, name, obj_id).is_file() and pose_path(root, name, obj_id).is_file()


def object_leftovers(root: str | Path, name: str, obj_id: int) -> list[Path]:
    """What interrupted runs left of one object: its `.partial` folders, pose files being written, and
    older vpog versions' `{obj_id:06d}.tmpPID` folders and pose files."""
    base, stem = Path(root) / name, f"{int(obj_id):06d}"
    found = list((base / PARTIAL_DIR).glob(f"{stem}.*")) + list(base.glob(f"{stem}.tmp*"))
    poses = base / "object_poses"
    found += list(poses.glob(f".{stem}.*.npy")) + list(poses.glob(f"{stem}.tmp*.npy"))
    return found


def remove_leftovers(root: str | Path, name: str, obj_id: int) -> int:
    """Delete `object_leftovers` (call only where no other process writes this object); returns how many."""
    paths = object_leftovers(root, name, obj_id)
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return len(paths)


def sweep_partial(root: str | Path, name: str, obj_ids) -> int:
    """After a run: delete the leftovers of `obj_ids` (objects this run owned) and the `.partial` folder
    once it is empty (other shards' objects in it are theirs). Returns how many leftovers went."""
    removed = sum(remove_leftovers(root, name, i) for i in obj_ids)
    try:
        (Path(root) / name / PARTIAL_DIR).rmdir()
    except OSError:  # absent, or another shard is writing into it
        pass
    return removed


class ViewWriter:
    """Encodes and writes template views in `threads` background threads (0: at once, in the caller).

    At most `max_pending` views wait (each holds its rgb and depth arrays), so a renderer faster than the
    writers blocks instead of filling memory. `seconds` is the writers' CPU time spent encoding and
    writing, `views` how many views they wrote.
    """

    def __init__(self, threads: int = 1, max_pending: int | None = None):
        if threads < 0:
            raise ValueError(f"writer threads must be >= 0, got {threads}")
        self.threads = int(threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vpog-writer") if self.threads else None
        self._slots = threading.BoundedSemaphore(max_pending or 4 * max(self.threads, 1))
        self._lock = threading.Lock()
        self.seconds = 0.0
        self.views = 0

    def _write(self, folder: Path, view: int, rgb: np.ndarray, depth: np.ndarray):
        t0 = time.thread_time()
        try:
            return save_view(folder, view, rgb, depth)
        finally:
            with self._lock:
                self.seconds += time.thread_time() - t0
                self.views += 1

    def submit(self, folder: Path, view: int, rgb: np.ndarray, depth: np.ndarray) -> Future:
        """Queue one view (the arrays must not change afterwards); its future gives `save_view`'s result."""
        if self._pool is None:
            future: Future = Future()
            future.set_result(self._write(folder, view, rgb, depth))
            return future
        self._slots.acquire()
        try:
            future = self._pool.submit(self._write, folder, view, rgb, depth)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def write_object_templates(renderer, obj, root: str | Path, name: str, level: int, width: int, height: int,
                           lighting: str = "ambient", distance_factor: float | None = None,
                           writer: ViewWriter | None = None) -> dict:
    """Render `obj` (a `vpog.data.meshes.ObjectModel`, metres) from every view of icosphere `level` and
    write `root/name/{obj_id:06d}/` (+ its marker) and `root/name/object_poses/{obj_id:06d}.npy` (mm).

    `writer` encodes and writes in the background (default: in this thread). Returns {"views",
    "render_seconds" (this thread's wall time in the render loop), "seconds" (wall time)}. Errors of the
    writer (a full disk) are raised; the object is then not done and a rerun redoes it.
    """
    from .render import render_object_views, to_pyrender_mesh

    t0 = time.perf_counter()
    K = scaled_K(width, height)
    distance = template_distance(obj.radius, obj.diameter, K, width, height, distance_factor)
    poses_mm = object_template_poses(int(level), distance)
    obj_id = int(obj.obj_id)
    # first: an interrupted redo must never leave the old marker beside a half-deleted old folder
    done_marker(root, name, obj_id).unlink(missing_ok=True)
    remove_leftovers(root, name, obj_id)
    final = template_dir(root, name, obj_id)
    tmp = Path(root) / name / PARTIAL_DIR / f"{obj_id:06d}.{writer_token()}"
    tmp.mkdir(parents=True)
    poses_m = poses_mm.copy()
    poses_m[:, :3, 3] /= 1000.0
    mesh = to_pyrender_mesh(obj.parts)
    own = writer is None
    writer = ViewWriter(0) if own else writer
    futures = []
    t_render = time.perf_counter()
    try:
        for view, (rgb, depth) in enumerate(render_object_views(renderer, mesh, obj.radius, poses_m, K, width,
                                                                height, lighting=lighting)):
            futures.append(writer.submit(tmp, view, rgb, depth))
        t_render = time.perf_counter() - t_render
        files = [[size for entry in f.result() for size in entry[1:]] for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()  # wait: no thread may still write into the folder removed next
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if own:
            writer.close()
    pp = pose_path(root, name, obj_id)
    pp.parent.mkdir(parents=True, exist_ok=True)
    tmp_pose = pp.with_name(f".{pp.stem}.{writer_token()}.npy")
    np.save(tmp_pose, poses_mm)
    os.replace(tmp_pose, pp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json_atomic(final / DONE_FILE, {"version": MARKER_VERSION, "views": len(files), "level": int(level),
                                           "width": int(width), "height": int(height),
                                           "files": files})  # per view [rgba size, crc32, depth size, crc32]
    return {"views": len(files), "render_seconds": t_render, "seconds": time.perf_counter() - t0}
