"""GigaPose templates: view poses, on-disk layout, reading and writing (numpy and Pillow; PNGs are written
by `vpog.data.png`).

Layout (docs/conventions.md §2), for a template root TEMPLATES and a dataset name:

    TEMPLATES/{name}/{obj_id:06d}/{view:06d}.png         RGBA, alpha = object mask
    TEMPLATES/{name}/{obj_id:06d}/{view:06d}_depth.png   uint16 depth, millimetres
    TEMPLATES/{name}/object_poses/{obj_id:06d}.npy       (V, 4, 4) T_m2c, millimetres
    TEMPLATES/{name}/camera.json                         optional {"cam_K", "width", "height"}; without it
                                                         GigaPose's camera: K below at 640x480

vpog's writer (`template_render`) adds what readers of the layout ignore: a hidden marker
`{obj_id:06d}/.done.json` (written last: the object is complete; every file's size and CRC-32) and,
while it writes, a hidden `TEMPLATES/{name}/.partial/` folder. PNGs: 8-bit RGBA and 16-bit grey, as
GigaPose's (`encode_view`).

The view set is an icosphere level (0: 42, 1: 162 (default), 2: 642 views): GigaPose's exact poses ship
in `vpog/assets/obj_poses_level{0,1,2}.npy` (camera at 1000 mm looking at the origin, no in-plane
rotation). GigaPose renders object `o` with the translation scaled to the object's diameter
(|t| = diameter); `object_template_poses` does the same, or fits the object's bounding sphere in view.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from .bop_writer import writer_token

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
    tmp = path.with_name(path.name + f".tmp{writer_token()}")
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


_ROWS = threading.local()  # per thread: the last size's scanline buffers and the box written into them


def _zeroed_rows(h: int, w: int):
    """This thread's zeroed scanline buffers for an h x w view: ((raw, rgba view), (raw, depth view)), reused
    from call to call (allocating 1.8 MB of fresh pages for every 640x480 view costs more than encoding
    it); only the box the previous view filled is cleared."""
    from .png import png_rows

    if getattr(_ROWS, "size", None) != (h, w):
        _ROWS.size, _ROWS.dirty = (h, w), None
        _ROWS.buffers = (png_rows(h, w, 4), png_rows(h, w, 1, np.uint16))
    if _ROWS.dirty is not None:
        for _, pixels in _ROWS.buffers:
            pixels[_ROWS.dirty] = 0
        _ROWS.dirty = None
    return _ROWS.buffers


def encode_view(rgb: np.ndarray, depth_m: np.ndarray) -> tuple[bytes, bytes]:
    """One rendered view -> (RGBA PNG bytes, 16-bit depth PNG bytes), the stored template files.

    rgb uint8 [H, W, 3], depth_m float32 [H, W] metres (0 = background). The RGBA image is rgb where
    depth > 0 and 0 elsewhere, alpha 255 / 0; depth is round(depth_m * 1000) in millimetres, clipped to
    uint16, computed in float32. Only the bounding box of the drawn pixels is filled in (everything else
    is 0 in both images, as the formula gives there), then `vpog.data.png` encodes the scanlines.
    """
    from .png import png_from_rows

    rgb, depth_m = np.asarray(rgb), np.asarray(depth_m)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or depth_m.shape != rgb.shape[:2]:
        raise ValueError(f"a view is rgb uint8 [H, W, 3] and depth [H, W], got {rgb.dtype} {rgb.shape} "
                         f"and {depth_m.shape}")
    h, w = depth_m.shape
    (raw_rgba, rgba), (raw_depth, depth_mm) = _zeroed_rows(h, w)
    mask = depth_m > 0
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows):
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        _ROWS.dirty = box
        m, src, dst = mask[box], rgb[box], rgba[box]
        for c in range(3):  # one channel at a time: numpy's inner loop then runs along a row, not over 3 bytes
            np.multiply(src[..., c], m, out=dst[..., c], casting="unsafe")
        np.multiply(m, np.uint8(255), out=dst[..., 3], casting="unsafe")
        mm = np.multiply(depth_m[box], np.float32(1000.0), dtype=np.float32)
        np.rint(mm, out=mm)
        np.clip(mm, 0, 65535, out=mm)
        depth_mm[box] = mm
    return png_from_rows(raw_rgba, w, 4), png_from_rows(raw_depth, w, 1, 16)


def view_files(view: int) -> tuple[str, str]:
    """File names of template `view` in its object's folder: (RGBA, depth)."""
    return f"{int(view):06d}.png", f"{int(view):06d}_depth.png"


def save_view(folder: Path, view: int, rgb: np.ndarray, depth_m: np.ndarray) -> list[tuple[str, int, int]]:
    """Write one template: `{view:06d}.png` RGBA (alpha = depth > 0) and `{view:06d}_depth.png` (uint16 mm),
    as `encode_view` encodes them. Returns [(file name, size in bytes, CRC-32 of the bytes)] of both."""
    import zlib

    written = []
    for fname, data in zip(view_files(view), encode_view(rgb, depth_m)):
        with open(Path(folder) / fname, "wb") as f:
            f.write(data)
        written.append((fname, len(data), zlib.crc32(data)))
    return written


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
