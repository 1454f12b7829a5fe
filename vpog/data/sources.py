"""One training set root: its shard index, models info and GigaPose templates, checked up front.

A `TrainingSource` is what `data.train_datasets[i]` names: a BOP-webdataset root (MegaPose-GSO,
MegaPose-ShapeNet, or a set written by `vpog.data.synthesize`) plus a template root holding
`{templates}/{name}/`. Everything missing that would make training fail later is reported here, with
its path: the root, `key_to_shard.json`, `models_info.json`, the template folder, or templates of an
object that the shards use.

`models_info.json` is read in both shapes found in the wild: BOP's `{"<obj_id>": {"diameter": mm}}` and
MegaPose's list `[{"obj_id": 1, "gso_id": ...}]` (no diameters).

One metric world per set (`scale_factor`): queries, template poses, template depths and object
diameters all come out in the metres of the training scenes. GigaPose renders the MegaPose-GSO and
-ShapeNet templates from the normalised meshes without MegaPose's 0.1 scene factor, a world 10 times
larger (its `render_gso_templates.py` / `render_shapenet_templates.py`), and undoes it with
`scale_factor: 10` in its data config (`configs/data/megapose.yaml`); vpog does the same, here and only
here: template translations and depths are divided by `scale_factor` (a similarity: the template
images and intrinsics stay as they are). Sets written by `vpog.data.synthesize` and BOP sets use 1.
Diameters: `vpog.data.diameters` (models_info, else the mesh, else measured on the templates; cached).

Object filter: `object_ids` keeps only the instances of those objects, `exclude_object_ids` drops the
instances of those (exclusion wins where both name an object); ids must be objects of the set's shards, so
a typo fails instead of silently training on everything. `restricted(...)` filters an existing source
further without indexing again (e.g. holding out objects once the split is known). Filtered-out objects
need no templates.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Iterable
from numbers import Integral
from pathlib import Path

import numpy as np

from .diameters import (
    DIAMETER_VIEWS,
    MEGAPOSE_MESH_SCALE,
    DiameterCache,
    backproject_to_model,
    hull_points,
    megapose_mesh_path,
    point_set_diameter,
    read_mesh_vertices,
    spread_views,
)
from .shards import ShardIndex
from .templates import pose_path, read_camera, read_view, viewing_directions

logger = logging.getLogger(__name__)


def load_models_info(root: Path) -> dict[int, dict]:
    """{obj_id: info} from ROOT/models_info.json (BOP dict or MegaPose list); FileNotFoundError if absent."""
    path = root / "models_info.json"
    if not path.is_file():
        alt = root / "models" / "models_info.json"
        if not alt.is_file():
            raise FileNotFoundError(f"training set root {root} has no models_info.json (looked for {path} and {alt})")
        path = alt
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        return {int(k): dict(v) for k, v in data.items()}
    if isinstance(data, list):
        return {int(e["obj_id"]): dict(e) for e in data}
    raise ValueError(f"{path} must be a dict keyed by obj_id or a list of {{'obj_id': ...}}, got {type(data).__name__}")


def object_id_list(values: Iterable | None, arg: str) -> list[int] | None:
    """Sorted unique object ids from `values` (None stays None); ValueError naming `arg` for non-integers."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ValueError(f"{arg} must be a list of integer object ids or null, got {values!r}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, Integral)]
    if bad:
        raise ValueError(f"{arg} must hold integer object ids, got {bad[:5]}")
    return sorted({int(v) for v in values})


class TrainingSource:
    """A training set: instances usable for training plus per-object template poses and diameters.

    `instances` [N] indexes the shard index's instance arrays (visib_fract > min_visib_fract, known object,
    templates present, passing the object filter). `stats` counts everything dropped, by reason
    (`excluded_objects`: visible instances removed by the object filter). `shard_objects` holds every
    object id of the shards, the ids a filter may name.
    """

    def __init__(self, name: str, root: str | Path, templates: str | Path, split: str = "train_pbr_web",
                 min_visib_fract: float = 0.1, index_cache_dir: str | Path | None = None, index_workers: int = 0,
                 missing_templates: str = "error", progress: bool = False, object_ids: Iterable[int] | None = None,
                 exclude_object_ids: Iterable[int] | None = None, scale_factor: float = 1.0,
                 diameter_views: int = DIAMETER_VIEWS):
        if missing_templates not in ("error", "skip"):
            raise ValueError(f"missing_templates must be 'error' or 'skip', got {missing_templates!r}")
        if not (np.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"training set '{name}': scale_factor must be a positive number, got {scale_factor}")
        self.scale_factor = float(scale_factor)
        self.diameter_views = int(diameter_views)
        self.name = name
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training set '{name}': root {self.root} does not exist")
        self.models_info = load_models_info(self.root)
        self.template_root = Path(templates)
        self.template_dir = self.template_root / name
        if not self.template_dir.is_dir():
            raise FileNotFoundError(f"training set '{name}': no templates folder {self.template_dir} "
                                    f"(expected {{templates}}/{name}/{{obj_id:06d}}/ and object_poses/)")
        self.index = ShardIndex(self.root, split, index_cache_dir, num_workers=index_workers, progress=progress)
        self.stats = dict(self.index.stats.as_dict())

        idx = self.index
        self.shard_objects = np.unique(idx.inst_obj).astype(np.int64)
        selected = self._object_mask(idx.inst_obj, object_ids, exclude_object_ids)
        used = np.unique(idx.inst_obj[selected])
        unknown = [int(o) for o in used if int(o) not in self.models_info]
        if unknown:
            logger.warning("training set '%s': %d object ids in the shards are not in models_info.json (e.g. %s); "
                           "their instances are skipped", name, len(unknown), unknown[:5])
        pose_files = set(os.listdir(self.template_dir / "object_poses")) if (
            self.template_dir / "object_poses").is_dir() else set()
        view_dirs = set(os.listdir(self.template_dir))
        missing = [int(o) for o in used if int(o) in self.models_info
                   and (f"{int(o):06d}.npy" not in pose_files or f"{int(o):06d}" not in view_dirs)]
        if missing and missing_templates == "error":
            o = missing[0]
            raise FileNotFoundError(
                f"training set '{name}': templates missing for {len(missing)} object(s) used in the shards, "
                f"e.g. obj_id {o}: need {self.template_dir / f'{o:06d}'}/ and {pose_path(self.template_root, name, o)} "
                f"(ids: {missing[:10]}{' ...' if len(missing) > 10 else ''}); render them with "
                f"`python -m vpog.data.synthesize` or set data.missing_templates=skip")
        if missing:
            logger.warning("training set '%s': no templates for %d objects; their instances are skipped", name,
                           len(missing))
        bad = np.isin(idx.inst_obj, np.array(unknown + missing, dtype=np.int64))
        visible = idx.inst_visib > min_visib_fract
        self.instances = np.flatnonzero(visible & ~bad & selected).astype(np.int64)
        self.stats.update(unknown_object=int((visible & selected & np.isin(idx.inst_obj, unknown)).sum()),
                          no_templates=int((visible & selected & np.isin(idx.inst_obj, missing)).sum()),
                          low_visibility=int((~visible).sum()), excluded_objects=int((visible & ~selected).sum()),
                          usable_instances=len(self.instances))
        if len(self.instances) == 0:
            raise ValueError(f"training set '{name}' at {self.root} has no usable instances "
                             f"(visib_fract > {min_visib_fract} with templates, object_ids={object_ids}, "
                             f"exclude_object_ids={exclude_object_ids}); index stats: {self.stats}")
        self.template_K, self.template_width, self.template_height = read_camera(self.template_root, name)
        self._poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._diameters = DiameterCache(self.index.cache_dir / "diameters.json", self.scale_factor)
        self._measure_diameters(self.objects, index_workers, progress)
        measured = [self._diameters.values[o] for o in self.objects]
        logger.info("training set '%s': scale_factor %g, %d object diameters (from %s), median %.4f m", name,
                    self.scale_factor, len(measured), ", ".join(sorted({how for _, how in measured})),
                    float(np.median([d for d, _ in measured])))

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def instance_objects(self) -> np.ndarray:
        """Object id of every usable instance. [N] int64."""
        return np.asarray(self.index.inst_obj[self.instances], dtype=np.int64)

    @property
    def objects(self) -> list[int]:
        """Sorted object ids that have usable instances."""
        return np.unique(self.instance_objects).tolist()

    def _object_mask(self, inst_obj: np.ndarray, object_ids: Iterable[int] | None,
                     exclude_object_ids: Iterable[int] | None) -> np.ndarray:
        """Bool mask over `inst_obj`: in `object_ids` (all when None) and not in `exclude_object_ids`."""
        keep = object_id_list(object_ids, "object_ids")
        drop = object_id_list(exclude_object_ids, "exclude_object_ids")
        known = set(self.shard_objects.tolist())
        for arg, ids in (("object_ids", keep), ("exclude_object_ids", drop)):
            unknown = [i for i in ids or () if i not in known]
            if unknown:
                shown = sorted(known)
                raise ValueError(f"training set '{self.name}': {arg} names object id(s) {unknown} that are not in "
                                 f"its shards (objects: {shown[:20]}{' ...' if len(shown) > 20 else ''})")
        if keep is not None and not keep:
            raise ValueError(f"training set '{self.name}': object_ids is empty (null keeps every object)")
        mask = np.ones(len(inst_obj), dtype=bool) if keep is None else np.isin(inst_obj, keep)
        if drop:
            mask &= ~np.isin(inst_obj, drop)
        return mask

    def restricted(self, object_ids: Iterable[int] | None = None,
                   exclude_object_ids: Iterable[int] | None = None) -> TrainingSource:
        """A copy holding only this source's instances of `object_ids` (None: all) minus `exclude_object_ids`.

        Shares the shard index and template caches (no indexing); ids must be objects of the shards
        (ValueError naming them), and something must be left (ValueError).
        """
        mask = self._object_mask(self.instance_objects, object_ids, exclude_object_ids)
        out = copy.copy(self)
        out.instances = self.instances[mask]
        out.stats = dict(self.stats, excluded_objects=self.stats.get("excluded_objects", 0) + int((~mask).sum()),
                         usable_instances=len(out.instances))
        if len(out.instances) == 0:
            raise ValueError(f"training set '{self.name}': no usable instance left with object_ids={object_ids}, "
                             f"exclude_object_ids={exclude_object_ids} (objects with instances: {self.objects})")
        return out

    def template_poses(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(T_m2c [V, 4, 4] float32, query-world metres; viewing directions [V, 3] float64) of an object's
        templates (the stored millimetres divided by 1000 x scale_factor)."""
        cached = self._poses.get(obj_id)
        if cached is None:
            path = pose_path(self.template_root, self.name, obj_id)
            poses = np.load(path).astype(np.float64)
            if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.isfinite(poses).all():
                raise ValueError(f"{path} must hold finite (V, 4, 4) poses, got shape {poses.shape}")
            poses[:, :3, 3] /= 1000.0 * self.scale_factor
            cached = (poses.astype(np.float32), viewing_directions(poses))
            if len(self._poses) > 4096:
                self._poses.pop(next(iter(self._poses)))
            self._poses[obj_id] = cached
        return cached

    def read_template(self, obj_id: int, view: int) -> tuple[np.ndarray, np.ndarray]:
        """One template view -> (rgba uint8 [H, W, 4], depth float32 [H, W], query-world metres).

        Raises FileNotFoundError naming a missing file."""
        rgba, depth = read_view(self.template_root, self.name, obj_id, view)
        if self.scale_factor != 1.0:
            depth /= np.float32(self.scale_factor)
        return rgba, depth

    def diameter(self, obj_id: int) -> float:
        """Object diameter, query-world metres (BOP's: the largest distance between two model points)."""
        hit = self._diameters.values.get(int(obj_id))
        if hit is None:
            self._measure_diameters([int(obj_id)], 0, False)
            hit = self._diameters.values[int(obj_id)]
        return hit[0]

    def diameter_source(self, obj_id: int) -> str:
        """Where `diameter(obj_id)` came from: models_info, mesh or templates."""
        self.diameter(obj_id)
        return self._diameters.values[int(obj_id)][1]

    def _measure_diameters(self, objects: Iterable[int], num_workers: int, progress: bool) -> None:
        """Fill the diameter cache for `objects` (models_info, else mesh, else templates); saves it."""
        todo = []
        for o in objects:
            o = int(o)
            if o in self._diameters.values:
                continue
            d = self.models_info.get(o, {}).get("diameter")
            if d is not None and np.isfinite(float(d)) and float(d) > 0:
                self._diameters.values[o] = (float(d) / 1000.0, "models_info")
            else:
                todo.append(o)
        if todo:
            logger.info("training set '%s': measuring %d object diameters (meshes or templates; cached in %s)",
                        self.name, len(todo), self._diameters.path)
            results = _measure_all(self, todo, num_workers, progress)
            for o, (d, how) in zip(todo, results):
                self._diameters.values[o] = (d, how)
        if todo or not self._diameters.path.is_file():
            self._diameters.save()

    def measure_diameter(self, obj_id: int) -> tuple[float, str]:
        """(diameter in query-world metres, "mesh" | "templates") measured now, not from models_info."""
        mesh = megapose_mesh_path(self.root, self.models_info.get(obj_id, {}))
        if mesh is not None:
            try:
                return point_set_diameter(read_mesh_vertices(mesh)) * MEGAPOSE_MESH_SCALE, "mesh"
            except (OSError, ValueError) as exc:
                logger.warning("object %d: mesh %s unreadable (%s); measuring it on the templates", obj_id, mesh,
                               exc)
        poses, dirs = self.template_poses(obj_id)
        points = []
        for v in spread_views(dirs, self.diameter_views):
            _, depth = self.read_template(obj_id, int(v))
            points.append(hull_points(backproject_to_model(depth, self.template_K, poses[v])))
        d = point_set_diameter(np.concatenate(points)) if points else 0.0
        if not d > 0:
            raise ValueError(f"training set '{self.name}': object {obj_id} has no diameter in models_info.json, "
                             f"no mesh, and empty template depths ({self.template_dir / f'{obj_id:06d}'})")
        return d, "templates"


_WORKER_SOURCE: TrainingSource | None = None


def _set_worker_source(source: TrainingSource) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _measure_in_worker(obj_id: int) -> tuple[float, str]:
    return _WORKER_SOURCE.measure_diameter(obj_id)


def _measure_all(source: TrainingSource, objects: list[int], num_workers: int, progress: bool) -> list:
    """[source.measure_diameter(o) for o in objects], on `num_workers` processes when > 1, with a bar."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(objects), desc=f"diameters {source.name}", unit="object")
    out = []
    try:
        if num_workers > 1 and len(objects) > 1:
            from concurrent.futures import ProcessPoolExecutor

            light = copy.copy(source)  # the workers need neither the shard index nor the instance list
            light.index, light.instances, light._poses = None, None, {}
            with ProcessPoolExecutor(num_workers, initializer=_set_worker_source, initargs=(light,)) as pool:
                for r in pool.map(_measure_in_worker, objects, chunksize=max(1, len(objects) // (8 * num_workers))):
                    out.append(r)
                    if bar is not None:
                        bar.update(1)
        else:
            for o in objects:
                out.append(source.measure_diameter(o))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out
