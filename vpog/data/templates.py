"""GigaPose templates: view poses, on-disk layout, reading and writing (numpy + Pillow only).

Layout (docs/conventions.md §2), for a template root TEMPLATES and a dataset name:

    TEMPLATES/{name}/{obj_id:06d}/{view:06d}.png         RGBA, alpha = object mask
    TEMPLATES/{name}/{obj_id:06d}/{view:06d}_depth.png   uint16 depth, millimetres
    TEMPLATES/{name}/object_poses/{obj_id:06d}.npy       (V, 4, 4) T_m2c, millimetres
    TEMPLATES/{name}/camera.json                         optional {"cam_K", "width", "height"}; without it
                                                         GigaPose's camera: K below at 640x480

The view set is an icosphere level (0: 42, 1: 162 (default), 2: 642 views): GigaPose's exact poses ship
in `vpog/assets/obj_poses_level{0,1,2}.npy` (camera at 1000 mm looking at the origin, no in-plane
rotation). GigaPose renders object `o` with the translation scaled to the object's diameter
(|t| = diameter); `object_template_poses` does the same, or fits the object's bounding sphere in view.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
GIGAPOSE_K = np.array([[572.4114, 0.0, 320.0], [0.0, 573.57043, 240.0], [0.0, 0.0, 1.0]])
GIGAPOSE_SIZE = (640, 480)  # width, height
NUM_VIEWS = {0: 42, 1: 162, 2: 642}


def template_poses(level: int = 1) -> np.ndarray:
    """GigaPose's template poses of icosphere `level` (0, 1 or 2): (V, 4, 4) float64 T_m2c, |t| = 1000 mm."""
    if level not in NUM_VIEWS:
        raise ValueError(f"level must be 0, 1 or 2, got {level}")
    path = ASSETS / f"obj_poses_level{level}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"template poses {path} are missing from the vpog installation")
    return np.load(path)


def viewing_directions(poses: np.ndarray) -> np.ndarray:
    """Unit vectors from the object origin to the camera, model frame: (..., 4, 4) -> (..., 3)
    (docs/conventions.md §1)."""
    poses = np.asarray(poses, dtype=np.float64)
    R, t = poses[..., :3, :3], poses[..., :3, 3]
    c = -np.einsum("...ji,...j->...i", R, t)
    return c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)


def scaled_K(width: int, height: int, K: np.ndarray = GIGAPOSE_K, size: tuple[int, int] = GIGAPOSE_SIZE) -> np.ndarray:
    """Intrinsics `K` of a `size` (w, h) image rescaled to (width, height), pixel centres kept consistent."""
    sx, sy = width / size[0], height / size[1]
    out = np.array(K, dtype=np.float64)
    out[0, 0], out[0, 1], out[0, 2] = K[0, 0] * sx, K[0, 1] * sx, (K[0, 2] + 0.5) * sx - 0.5
    out[1, 1], out[1, 2] = K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5
    return out


def fit_distance(radius: float, K: np.ndarray, width: int, height: int, margin: float = 0.9) -> float:
    """Camera distance at which a sphere of `radius` around the look-at point fills `margin` of the
    smaller half-size of the image (so no view clips the object)."""
    half = margin * min(width / 2 / K[0, 0], height / 2 / K[1, 1])  # tan of the half field of view
    return float(radius / np.sin(np.arctan(half)))


def object_template_poses(level: int, distance_m: float) -> np.ndarray:
    """Template poses of one object with the camera at `distance_m`: (V, 4, 4) float64, millimetres."""
    poses = template_poses(level).copy()
    poses[:, :3, 3] *= distance_m  # |t| = 1000 mm -> distance_m * 1000 mm
    return poses


def template_dir(root: str | Path, name: str, obj_id: int) -> Path:
    return Path(root) / name / f"{int(obj_id):06d}"


def pose_path(root: str | Path, name: str, obj_id: int) -> Path:
    return Path(root) / name / "object_poses" / f"{int(obj_id):06d}.npy"


def write_camera(root: str | Path, name: str, K: np.ndarray, width: int, height: int) -> None:
    path = Path(root) / name / "camera.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"cam_K": np.asarray(K, dtype=np.float64).reshape(-1).tolist(),
                               "width": int(width), "height": int(height), "depth_unit": "mm"}))
    os.replace(tmp, path)


def read_camera(root: str | Path, name: str) -> tuple[np.ndarray, int, int]:
    """(K [3, 3], width, height) of a template set: its camera.json, else GigaPose's camera."""
    path = Path(root) / name / "camera.json"
    if path.is_file():
        cam = json.loads(path.read_text())
        return np.array(cam["cam_K"], dtype=np.float64).reshape(3, 3), int(cam["width"]), int(cam["height"])
    return GIGAPOSE_K.copy(), GIGAPOSE_SIZE[0], GIGAPOSE_SIZE[1]


def save_view(folder: Path, view: int, rgb: np.ndarray, depth_m: np.ndarray, compress_level: int = 1) -> None:
    """Write one template: `{view:06d}.png` RGBA (alpha = depth > 0) and `{view:06d}_depth.png` (uint16 mm)."""
    mask = depth_m > 0
    rgba = np.concatenate([np.where(mask[..., None], rgb, 0), (mask * 255).astype(np.uint8)[..., None]], axis=-1)
    Image.fromarray(rgba.astype(np.uint8), mode="RGBA").save(folder / f"{view:06d}.png",
                                                            compress_level=compress_level)
    depth_mm = np.clip(np.round(depth_m * 1000.0), 0, 65535).astype(np.uint16)
    Image.fromarray(depth_mm).save(folder / f"{view:06d}_depth.png", compress_level=compress_level)


def read_png_depth(data_or_path) -> np.ndarray:
    """A 16-bit depth PNG (bytes or path) -> raw values as float32 [H, W]."""
    import io

    src = io.BytesIO(data_or_path) if isinstance(data_or_path, (bytes, bytearray)) else data_or_path
    with Image.open(src) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.float32)


def read_view(root: str | Path, name: str, obj_id: int, view: int) -> tuple[np.ndarray, np.ndarray]:
    """One stored template, raw -> (rgba uint8 [H, W, 4], depth float32 metres [H, W]).

    Raises FileNotFoundError naming the missing file.
    """
    folder = template_dir(root, name, obj_id)
    rgba_path = folder / f"{int(view):06d}.png"
    depth_path = folder / f"{int(view):06d}_depth.png"
    for p in (rgba_path, depth_path):
        if not p.is_file():
            raise FileNotFoundError(f"template {p} is missing")
    with Image.open(rgba_path) as im:
        rgba = np.asarray(im if im.mode == "RGBA" else im.convert("RGBA"))
    depth = read_png_depth(depth_path)
    depth *= np.float32(0.001)
    return rgba, depth


def load_view(root: str | Path, name: str, obj_id: int, view: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stored template -> (rgb uint8 [H, W, 3], mask bool [H, W] (alpha >= 128), depth float32 metres [H, W])."""
    rgba, depth = read_view(root, name, obj_id, view)
    return np.ascontiguousarray(rgba[..., :3]), rgba[..., 3] >= 128, depth


class TemplateSet:
    """One named GigaPose template set read for inference (`vpog.evaluation.ObjectLibrary` reads it):
    poses and depths in metres (the stored millimetres / 1000; true-scale templates, scale factor 1)."""

    def __init__(self, root: str | Path, name: str):
        self.template_root = Path(root)
        self.name = name
        if not (self.template_root / name).is_dir():
            raise FileNotFoundError(f"template set {self.template_root / name} does not exist")
        self.template_K, self.template_width, self.template_height = read_camera(self.template_root, name)
        self._poses: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def has_object(self, obj_id: int) -> bool:
        return pose_path(self.template_root, self.name, obj_id).is_file() and template_dir(
            self.template_root, self.name, obj_id).is_dir()

    def objects(self) -> list[int]:
        folder = self.template_root / self.name / "object_poses"
        return sorted(int(p.stem) for p in folder.glob("*.npy") if p.stem.isdigit()) if folder.is_dir() else []

    def template_poses(self, obj_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(T_m2c [V, 4, 4] float32 metres, viewing directions [V, 3] float64) of an object's templates."""
        if obj_id not in self._poses:
            path = pose_path(self.template_root, self.name, obj_id)
            if not path.is_file():
                raise FileNotFoundError(f"template poses {path} of object {obj_id} are missing")
            poses = np.load(path).astype(np.float64)
            if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.isfinite(poses).all():
                raise ValueError(f"{path} must hold finite (V, 4, 4) poses, got shape {poses.shape}")
            poses[:, :3, 3] /= 1000.0
            self._poses[obj_id] = (poses.astype(np.float32), viewing_directions(poses))
        return self._poses[obj_id]

    def read_template(self, obj_id: int, view: int) -> tuple[np.ndarray, np.ndarray]:
        """One view -> (rgba uint8 [H, W, 4], depth float32 [H, W] metres)."""
        return read_view(self.template_root, self.name, obj_id, view)
