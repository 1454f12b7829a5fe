"""Read a BOP dataset in the standard "scenes" layout, as downloaded from the BOP site.

Layout (bop_toolkit `docs/bop_datasets_format.md`, `bop_toolkit_lib/dataset_params.py`):

    ROOT/models/obj_{obj_id:06d}.ply            model meshes, millimetres
    ROOT/models/models_info.json                {"<obj_id>": {"diameter": mm, "min_x": ..., "symmetries_discrete":
                                                [[16 floats, mm]], "symmetries_continuous": [{"axis", "offset"}]}}
    ROOT/models_eval/obj_{obj_id:06d}.ply       optional: the meshes the toolkit computes errors on
    ROOT/{split}/{scene_id:06d}/scene_camera.json  {"<im_id>": {"cam_K": [9], "depth_scale": mm per unit, ...}}
    ROOT/{split}/{scene_id:06d}/scene_gt.json      {"<im_id>": [{"cam_R_m2c": [9], "cam_t_m2c": [3] mm, "obj_id"}]}
    ROOT/{split}/{scene_id:06d}/scene_gt_info.json {"<im_id>": [{"bbox_obj", "bbox_visib", "px_count_*",
                                                "visib_fract"}]}, in the order of scene_gt.json
    ROOT/{split}/{scene_id:06d}/rgb/{im_id:06d}.png|.jpg, or gray/{im_id:06d}.png|.tif (ITODD)
    ROOT/{split}/{scene_id:06d}/depth/{im_id:06d}.png|.tif   depth_mm = value * depth_scale
    ROOT/{split}/{scene_id:06d}/mask_visib/{im_id:06d}_{gt_id:06d}.png
    ROOT/test_targets_bop19.json                [{"scene_id", "im_id", "obj_id", "inst_count"}]

Ground truth is optional: the real test splits ship only scene_camera.json and the images. Poses stay
in BOP units here (rotation matrices, translations in millimetres); `vpog.PoseEstimator` works in metres.

References: bop_toolkit `bop_toolkit_lib/inout.py` (load_json with integer keys l.73-98,
load_scene_camera l.221-233, load_scene_gt l.267-283, get_im_targets l.909-935).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from vpog.evaluation.objects import read_ply_vertices

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
DEFAULT_TARGETS = "test_targets_bop19.json"


class Camera(NamedTuple):
    """One image's camera: K [3, 3] float64 (pixels) and depth_scale (millimetres per depth-image unit)."""

    K: np.ndarray
    depth_scale: float


class Target(NamedTuple):
    """One evaluation target: `inst_count` instances of `obj_id` in image (scene_id, im_id)."""

    scene_id: int
    im_id: int
    obj_id: int
    inst_count: int


@dataclass
class GtInstance:
    """One ground-truth instance of an image (BOP units: R [3, 3], t [3] millimetres, model to camera)."""

    index: int
    """gt_id: position in the image's scene_gt.json list (names its mask files)."""
    obj_id: int
    R: np.ndarray
    t: np.ndarray
    visib_fract: float | None = None
    bbox_visib: np.ndarray | None = None
    """[4] x, y, w, h pixels of the visible part (-1s when invisible), from scene_gt_info.json."""
    bbox_obj: np.ndarray | None = None
    px_count_visib: int | None = None


def read_json(path: Path, what: str):
    """A JSON file's content; FileNotFoundError / ValueError naming the file (`what` says what it should be)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({what}): {exc}") from None


def _int_keys(data, path: Path) -> dict[int, object]:
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object keyed by id, got {type(data).__name__}")
    try:
        return {int(k): v for k, v in data.items()}
    except ValueError:
        raise ValueError(f"{path}: keys must be integer ids, got {list(data)[:3]}") from None


def _matrix(values, shape: tuple[int, ...], path: Path, field: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size != int(np.prod(shape)) or not np.isfinite(arr).all():
        raise ValueError(f"{path}: {field} must be {int(np.prod(shape))} finite numbers, got {values!r}")
    return arr.reshape(shape)


def read_models_info(path: Path) -> dict[int, dict]:
    """BOP models_info.json -> {obj_id: entry}; each entry needs a positive diameter (mm)."""
    info = _int_keys(read_json(path, "BOP models info: {obj_id: {diameter, ...}}"), path)
    for obj_id, entry in info.items():
        if not isinstance(entry, dict) or not float(entry.get("diameter", 0)) > 0:
            raise ValueError(f"{path}: object {obj_id} has no positive 'diameter' (mm)")
    return dict(sorted(info.items()))


class BopDataset:
    """One BOP dataset split: models, cameras, images, optional ground truth and the evaluation targets.

    root: the dataset folder (e.g. `bop_datasets/lmo`); split: its image folder (`test`, `val`,
    `test_primesense` for T-LESS / HB); models: the model folder; targets: file name under root, or
    None for every ground-truth object of every image (needs ground truth).
    """

    def __init__(self, root: str | Path, split: str = "test", models: str = "models",
                 targets: str | None = DEFAULT_TARGETS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"BOP dataset folder {self.root} does not exist")
        self.name = self.root.name
        self.split = split
        self.split_dir = self.root / split
        if not self.split_dir.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise FileNotFoundError(f"{self.split_dir} does not exist (split={split}; folders here: {present})")
        self.models_dir = self.root / models
        self.models_info = read_models_info(self.models_dir / "models_info.json")
        self.obj_ids = sorted(self.models_info)
        self.targets_file = None if targets is None else self.root / targets
        self._scene_cache: dict[tuple[int, str], dict] = {}
        self._points: dict[tuple[int, bool], np.ndarray] = {}

    def __repr__(self) -> str:
        return f"BopDataset({str(self.root)!r}, split={self.split!r}, objects={len(self.obj_ids)})"

    # ------------------------------------------------------------------ models

    def model_path(self, obj_id: int) -> Path:
        return self.models_dir / f"obj_{int(obj_id):06d}.ply"

    def eval_model_path(self, obj_id: int) -> Path:
        """The toolkit's error models: `models_eval/` when the dataset ships it, else `model_path`."""
        path = self.root / "models_eval" / f"obj_{int(obj_id):06d}.ply"
        return path if path.is_file() else self.model_path(obj_id)

    def model_points(self, obj_id: int, eval: bool = True) -> np.ndarray:
        """Vertices of an object's model, [N, 3] float64 millimetres (cached)."""
        key = (int(obj_id), bool(eval))
        if key not in self._points:
            path = self.eval_model_path(obj_id) if eval else self.model_path(obj_id)
            if not path.is_file():
                raise FileNotFoundError(f"model {path} of object {obj_id} is missing")
            pts = read_ply_vertices(path)
            if len(pts) == 0:
                raise ValueError(f"model {path} has no vertices")
            self._points[key] = pts
        return self._points[key]

    def diameter_mm(self, obj_id: int) -> float:
        self._check_object(obj_id)
        return float(self.models_info[int(obj_id)]["diameter"])

    def _check_object(self, obj_id: int) -> None:
        if int(obj_id) not in self.models_info:
            raise KeyError(f"object {obj_id} is not in {self.models_dir / 'models_info.json'} "
                           f"(objects: {self.obj_ids})")

    # ------------------------------------------------------------------ scenes

    def scene_ids(self) -> list[int]:
        return sorted(int(p.name) for p in self.split_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def scene_dir(self, scene_id: int) -> Path:
        return self.split_dir / f"{int(scene_id):06d}"

    def _scene_file(self, scene_id: int, name: str, required: bool = True) -> dict | None:
        key = (int(scene_id), name)
        if key not in self._scene_cache:
            path = self.scene_dir(scene_id) / name
            if not path.is_file():
                if required:
                    raise FileNotFoundError(f"{path} is missing (scene {scene_id} of {self.split_dir})")
                return None
            self._scene_cache[key] = _int_keys(read_json(path, f"BOP {name}"), path)
            if len(self._scene_cache) > 64:
                self._scene_cache.pop(next(iter(self._scene_cache)))
        return self._scene_cache[key]

    def image_ids(self, scene_id: int) -> list[int]:
        return sorted(self._scene_file(scene_id, "scene_camera.json"))

    def camera(self, scene_id: int, im_id: int) -> Camera:
        cams = self._scene_file(scene_id, "scene_camera.json")
        path = self.scene_dir(scene_id) / "scene_camera.json"
        if int(im_id) not in cams:
            raise KeyError(f"{path} has no image {im_id}")
        cam = cams[int(im_id)]
        if "cam_K" not in cam:
            raise ValueError(f"{path}: image {im_id} has no cam_K (BOP24 cam_model cameras are not supported)")
        K = _matrix(cam["cam_K"], (3, 3), path, f"image {im_id} cam_K")
        return Camera(K=K, depth_scale=float(cam.get("depth_scale", 1.0)))

    def has_gt(self, scene_id: int) -> bool:
        return (self.scene_dir(scene_id) / "scene_gt.json").is_file()

    def gt(self, scene_id: int, im_id: int) -> list[GtInstance]:
        """Ground-truth instances of an image (empty list when the image has none). FileNotFoundError
        without scene_gt.json (test splits of the BOP challenge)."""
        gts = self._scene_file(scene_id, "scene_gt.json")
        infos = self._scene_file(scene_id, "scene_gt_info.json", required=False) or {}
        path = self.scene_dir(scene_id) / "scene_gt.json"
        entries, info = gts.get(int(im_id), []), infos.get(int(im_id))
        if info is not None and len(info) != len(entries):
            raise ValueError(f"{self.scene_dir(scene_id) / 'scene_gt_info.json'}: image {im_id} has {len(info)} "
                             f"entries, scene_gt.json has {len(entries)}")
        out = []
        for i, e in enumerate(entries):
            extra = info[i] if info is not None else {}
            out.append(GtInstance(
                index=i, obj_id=int(e["obj_id"]), R=_matrix(e["cam_R_m2c"], (3, 3), path, "cam_R_m2c"),
                t=_matrix(e["cam_t_m2c"], (3,), path, "cam_t_m2c"),
                visib_fract=float(extra["visib_fract"]) if "visib_fract" in extra else None,
                bbox_visib=np.asarray(extra["bbox_visib"], dtype=np.float64) if "bbox_visib" in extra else None,
                bbox_obj=np.asarray(extra["bbox_obj"], dtype=np.float64) if "bbox_obj" in extra else None,
                px_count_visib=int(extra["px_count_visib"]) if "px_count_visib" in extra else None))
        return out

    # ------------------------------------------------------------------ images

    def _image_path(self, scene_id: int, im_id: int, folders: tuple[str, ...]) -> Path:
        d = self.scene_dir(scene_id)
        for folder in folders:
            for suffix in IMAGE_SUFFIXES:
                path = d / folder / f"{int(im_id):06d}{suffix}"
                if path.is_file():
                    return path
        raise FileNotFoundError(f"no image {int(im_id):06d}.(png|jpg|tif) in {d}/{'|'.join(folders)}")

    def rgb_path(self, scene_id: int, im_id: int) -> Path:
        return self._image_path(scene_id, im_id, ("rgb", "gray"))

    def rgb(self, scene_id: int, im_id: int) -> np.ndarray:
        """The image as uint8 [H, W, 3] (gray images repeated on three channels; 16-bit gray scaled)."""
        path = self.rgb_path(scene_id, im_id)
        with Image.open(path) as im:
            arr = np.asarray(im)
        if arr.dtype == np.uint16 or arr.dtype == np.int32:
            arr = np.clip(arr.astype(np.float64) / max(1.0, float(arr.max())) * 255.0, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise ValueError(f"{path}: expected an RGB or gray image, got shape {arr.shape}")
        return np.ascontiguousarray(arr[..., :3].astype(np.uint8))

    def image_size(self, scene_id: int, im_id: int) -> tuple[int, int]:
        """(width, height) of an image, from its file header."""
        with Image.open(self.rgb_path(scene_id, im_id)) as im:
            return im.size

    def depth_mm(self, scene_id: int, im_id: int) -> np.ndarray:
        """Depth image in millimetres, float32 [H, W] (0 = no measurement): file values x depth_scale."""
        path = self._image_path(scene_id, im_id, ("depth",))
        with Image.open(path) as im:
            arr = np.asarray(im).astype(np.float32)
        if arr.ndim != 2:
            raise ValueError(f"{path}: a depth image must have one channel, got shape {arr.shape}")
        return arr * np.float32(self.camera(scene_id, im_id).depth_scale)

    def mask_visib(self, scene_id: int, im_id: int, gt_index: int) -> np.ndarray:
        """Visible mask of ground-truth instance `gt_index` of an image, bool [H, W]."""
        path = self.scene_dir(scene_id) / "mask_visib" / f"{int(im_id):06d}_{int(gt_index):06d}.png"
        if not path.is_file():
            raise FileNotFoundError(f"visible mask {path} is missing")
        with Image.open(path) as im:
            arr = np.asarray(im)
        return (arr[..., 0] if arr.ndim == 3 else arr) > 127

    # ------------------------------------------------------------------ targets

    @cached_property
    def _targets(self) -> list[Target]:
        if self.targets_file is None:
            return self._targets_from_gt()
        path = self.targets_file
        data = read_json(path, "BOP targets: [{scene_id, im_id, obj_id, inst_count}]")
        if not isinstance(data, list):
            raise ValueError(f"{path} must hold a JSON list of targets, got {type(data).__name__}")
        out = []
        for i, t in enumerate(data):
            try:
                out.append(Target(int(t["scene_id"]), int(t["im_id"]), int(t["obj_id"]), int(t["inst_count"])))
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: entry {i} must have integer scene_id, im_id, obj_id, inst_count; "
                                 f"got {t!r}") from None
        unknown = sorted({t.obj_id for t in out} - set(self.obj_ids))
        if unknown:
            raise ValueError(f"{path}: targets name objects {unknown} that models_info.json does not have")
        return out

    def _targets_from_gt(self, visib_gt_min: float = 0.1) -> list[Target]:
        out = []
        for scene_id in self.scene_ids():
            for im_id in self.image_ids(scene_id):
                counts: dict[int, int] = {}
                for g in self.gt(scene_id, im_id):
                    if g.visib_fract is not None and g.visib_fract < visib_gt_min:
                        continue
                    counts[g.obj_id] = counts.get(g.obj_id, 0) + 1
                out.extend(Target(scene_id, im_id, o, n) for o, n in sorted(counts.items()))
        return out

    def targets(self) -> list[Target]:
        """The evaluation targets, in file order (without a targets file: every ground-truth object with
        visib_fract >= 0.1 of every image, as `inout.get_im_targets` in localization mode)."""
        return list(self._targets)

    def target_images(self) -> list[tuple[int, int, list[Target]]]:
        """Targets grouped by image: [(scene_id, im_id, [targets])] sorted by (scene_id, im_id)."""
        by_image: dict[tuple[int, int], list[Target]] = {}
        for t in self._targets:
            by_image.setdefault((t.scene_id, t.im_id), []).append(t)
        return [(s, i, ts) for (s, i), ts in sorted(by_image.items())]
