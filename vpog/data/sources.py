"""One training set root: its shard index, models info and GigaPose templates, checked up front.

A `TrainingSource` is what `data.train_datasets[i]` names: a BOP-webdataset root (MegaPose-GSO,
MegaPose-ShapeNet, or a set written by `vpog.data.synthesize`) plus a template root holding
`{templates}/{name}/`. Everything missing that would make training fail later is reported here, with
its path: the root, `key_to_shard.json`, `models_info.json`, the template folder, or templates of an
object that the shards use.

`models_info.json` is read in both shapes found in the wild: BOP's `{"<obj_id>": {"diameter": mm}}` and
MegaPose's list `[{"obj_id": 1, "gso_id": ...}]` (no diameters). Missing diameters come from GigaPose's
`{templates}/{name}/diameter.json` when present, else from the template poses (GigaPose puts the
template camera at one diameter from the object, so |t| = diameter).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from .shards import ShardIndex
from .templates import pose_path, read_camera, viewing_directions

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


class TrainingSource:
    """A training set: instances usable for training plus per-object template poses and diameters.

    `instances` [N] indexes the shard index's instance arrays (visib_fract > min_visib_fract, known object,
    templates present). `stats` counts everything dropped, by reason.
    """

    def __init__(self, name: str, root: str | Path, templates: str | Path, split: str = "train_pbr_web",
                 min_visib_fract: float = 0.1, index_cache_dir: str | Path | None = None, index_workers: int = 0,
                 missing_templates: str = "error", progress: bool = False):
        if missing_templates not in ("error", "skip"):
            raise ValueError(f"missing_templates must be 'error' or 'skip', got {missing_templates!r}")
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
        used = np.unique(idx.inst_obj)
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
        self.instances = np.flatnonzero(visible & ~bad).astype(np.int64)
        self.stats.update(unknown_object=int((visible & np.isin(idx.inst_obj, unknown)).sum()),
                          no_templates=int((visible & np.isin(idx.inst_obj, missing)).sum()),
                          low_visibility=int((~visible).sum()), usable_instances=len(self.instances))
        if len(self.instances) == 0:
            raise ValueError(f"training set '{name}' at {self.root} has no usable instances "
                             f"(visib_fract > {min_visib_fract} with templates); index stats: {self.stats}")
        self.template_K, self.template_width, self.template_height = read_camera(self.template_root, name)
        self._diameter_json = self._load_diameter_json()
        self._poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.instances)

    def _load_diameter_json(self) -> dict[int, float]:
        path = self.template_dir / "diameter.json"  # GigaPose writes this next to its GSO templates
        if not path.is_file():
            return {}
        try:
            return {int(e["obj_id"]): float(e["diameter"]) for e in json.loads(path.read_text())}
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring unreadable %s", path)
            return {}

    def template_poses(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(T_m2c [V, 4, 4] float32 metres, viewing directions [V, 3] float64) of an object's templates."""
        cached = self._poses.get(obj_id)
        if cached is None:
            path = pose_path(self.template_root, self.name, obj_id)
            poses = np.load(path).astype(np.float64)
            if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.isfinite(poses).all():
                raise ValueError(f"{path} must hold finite (V, 4, 4) poses, got shape {poses.shape}")
            poses[:, :3, 3] /= 1000.0
            cached = (poses.astype(np.float32), viewing_directions(poses))
            if len(self._poses) > 4096:
                self._poses.pop(next(iter(self._poses)))
            self._poses[obj_id] = cached
        return cached

    def diameter(self, obj_id: int) -> float:
        """Object diameter in metres (models_info, else GigaPose's diameter.json, else the template distance)."""
        d = self.models_info.get(obj_id, {}).get("diameter")
        if d is None or d <= 0:
            d = self._diameter_json.get(obj_id)
        if d is None or d <= 0:  # GigaPose's diameter.json says -1 for objects it could not load
            poses, _ = self.template_poses(obj_id)
            return float(np.median(np.linalg.norm(poses[:, :3, 3], axis=1)))
        return float(d) / 1000.0
