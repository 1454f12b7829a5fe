"""Write a test split in the BOP "scenes" layout (as downloaded from the BOP site) from rendered scenes.

Layout under a dataset root ROOT (bop_toolkit `docs/bop_datasets_format.md`, path templates of
`bop_toolkit_lib/dataset_params.py` l.600-640):

    ROOT/camera.json                                   {"cx", "cy", "depth_scale", "fx", "fy", "height", "width"}
    ROOT/test_targets_bop19.json                       [{"im_id", "inst_count", "obj_id", "scene_id"}, ...]
    ROOT/test/{scene_id:06d}/scene_camera.json         {"<im_id>": {"cam_K": [9], "depth_scale": 0.1}}
    ROOT/test/{scene_id:06d}/scene_gt.json             {"<im_id>": [{"cam_R_m2c": [9], "cam_t_m2c": [3] mm,
                                                       "obj_id"}, ...]}
    ROOT/test/{scene_id:06d}/scene_gt_info.json        {"<im_id>": [{"bbox_obj", "bbox_visib", "px_count_all",
                                                       "px_count_valid", "px_count_visib", "visib_fract"}, ...]}
    ROOT/test/{scene_id:06d}/rgb/{im_id:06d}.png       uint8 RGB
    ROOT/test/{scene_id:06d}/depth/{im_id:06d}.png     uint16, depth_mm = value * depth_scale
    ROOT/test/{scene_id:06d}/mask/{im_id:06d}_{gt_id:06d}.png and mask_visib/...   uint8 0/255

The JSON files are formatted as bop_toolkit's `inout.save_json` writes them (one top-level entry per line,
sorted keys). Masks and gt_info follow the toolkit's recipe on the written files: the object is rendered
alone in its ground-truth pose (on a canvas three times the image where it leaves the image, so
`px_count_all` and `bbox_obj` include the truncated part), depths become distances from the camera
centre, and a silhouette pixel is visible where the object is at most `VISIB_DELTA_MM` behind the scene
or the scene has no depth (visibility mode "bop19"). The tolerance is 5 mm, the value BOP used for its
photorealistic (rendered) images; the real test sets use 15 mm for sensor noise. Boxes are
`[x_min, y_min, x_max - x_min, y_max - y_min]`, exactly as the toolkit's `calc_2d_bbox` (one pixel
narrower than the pixel extent; the training shards of `bop_writer.py` use the extent).

A BOP scene here groups `images_per_scene` independent random scenes (each image its own arrangement);
nothing in the format requires one arrangement seen from several viewpoints, and `cam_R_w2c`/`cam_t_w2c`
are optional. Each scene folder is written under a temporary name and renamed when complete.

References: bop_toolkit `bop_toolkit_lib/inout.py` (save_im l.34-44, save_depth l.56-70, save_json
l.101-142, save_scene_camera l.236-246, save_scene_gt l.286-303), `scripts/calc_gt_info.py` (l.78-198),
`scripts/calc_gt_masks.py` (l.127-164), `bop_toolkit_lib/visibility.py` (l.9-43),
`bop_toolkit_lib/misc.py` (depth_im_to_dist_im_fast l.109-165, calc_2d_bbox l.204-220),
`scripts/enumerate_test_targets.py` (l.59-104). No code is copied.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .bop_writer import ImageRecord, depth_to_png

SPLIT = "test"
TARGETS_FILE = "test_targets_bop19.json"
CAMERA_FILE = "camera.json"
DEPTH_SCALE = 0.1  # depth_mm = png * 0.1, as the training shards (BOP PBR and MegaPose use 0.1)
VISIB_DELTA_MM = 5.0  # visibility tolerance; BOP: 5 mm for rendered (PBR) images, 15 mm for real test sets
MIN_VISIB_FRACT = 0.1  # enumerate_test_targets.py: an instance is a target when visib_fract >= 0.1
PNG_COMPRESSION = 3  # inout.save_im: imageio's `compression=3`


def bop_json_text(content) -> str:
    """`content` as bop_toolkit's `inout.save_json` formats it (inout.py l.101-142).

    A dict: one `  "key": value` line per entry, in key order (integer keys numerically, as the toolkit's
    int-keyed dicts sort), values `json.dumps(..., sort_keys=True)`. A list: one `  value` line per item.
    Anything else: one `json.dumps` line. No trailing newline.
    """
    if isinstance(content, dict):
        items = sorted(content.items(), key=lambda kv: kv[0])
        body = [f'  "{k}": {json.dumps(v, sort_keys=True)}' for k, v in items]
        return "{\n" + ",\n".join(body) + ("\n" if body else "") + "}"
    if isinstance(content, list):
        body = [f"  {json.dumps(v, sort_keys=True)}" for v in content]
        return "[\n" + ",\n".join(body) + ("\n" if body else "") + "]"
    return json.dumps(content, sort_keys=True)


def save_bop_json(path: str | Path, content) -> None:
    """Write `bop_json_text(content)` to `path` (through a temporary file and a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(bop_json_text(content))
    os.replace(tmp, path)


def distance_image(depth_mm: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Depth (z, mm) [H, W] -> distance from the camera centre (mm) [H, W] float64, 0 where depth is 0.

    Pixel (x, y) looks along ((x - cx) / fx, (y - cy) / fy, 1): integer coordinates are pixel centres
    (misc.py l.109-165).
    """
    h, w = depth_mm.shape
    xs = (np.arange(w, dtype=np.float64) - K[0, 2]) / K[0, 0]
    ys = (np.arange(h, dtype=np.float64) - K[1, 2]) / K[1, 1]
    d = depth_mm.astype(np.float64)
    return d * np.sqrt(xs[None, :] ** 2 + ys[:, None] ** 2 + 1.0)


def visible_mask(dist_scene: np.ndarray, dist_obj: np.ndarray, delta_mm: float = VISIB_DELTA_MM) -> np.ndarray:
    """Visibility "bop19" (visibility.py l.9-43): bool [H, W], object pixels at most `delta_mm` behind the
    scene, or where the scene has no depth."""
    diff = dist_obj.astype(np.float32) - dist_scene.astype(np.float32)
    return ((diff <= delta_mm) | (dist_scene == 0)) & (dist_obj > 0)


def bbox_2d(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[int]:
    """calc_2d_bbox of a mask's pixels (misc.py l.204-220): [x_min, y_min, x_max - x_min, y_max - y_min],
    in image pixels when the mask is a canvas whose pixel (offset) is the image's (0, 0)."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()) - offset[0], int(ys.min()) - offset[1]
    return [x0, y0, int(xs.max()) - offset[0] - x0, int(ys.max()) - offset[1] - y0]


def render_object_depth(renderer, obj, T_m2c: np.ndarray, K: np.ndarray, width: int, height: int, meshes: dict,
                        canvas_meshes: dict) -> tuple[np.ndarray, tuple[int, int]]:
    """Depth (mm) of one object alone in pose `T_m2c` (metres) -> (canvas depth float64, (ox, oy)).

    The canvas is the image when the projected vertices stay inside it, else three times the image with
    the image at offset (width, height) (calc_gt_info.py l.78-85, 129-141), so truncated silhouettes are
    counted whole. `obj` is the ObjectModel; `meshes` {obj_id: pyrender.Mesh} are the meshes the scene was
    rendered with (bound to the image-size context), `canvas_meshes` a cache of copies for the large
    canvas (a pyrender mesh can be bound to one GL context at a time).
    """
    from .render import CV_TO_GL, _import_pyrender, make_camera, to_pyrender_mesh

    pyrender = _import_pyrender()
    vertices = obj.vertices
    cam = vertices @ T_m2c[:3, :3].T + T_m2c[:3, 3]
    z = np.maximum(cam[:, 2], 1e-9)
    u = K[0, 0] * cam[:, 0] / z + K[0, 2]
    v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    inside = cam[:, 2].min() > 0 and u.min() >= 1 and v.min() >= 1 and u.max() <= width - 2 and v.max() <= height - 2
    if inside:
        ox, oy, mesh = 0, 0, meshes[obj.obj_id]
    else:
        ox, oy = width, height
        if obj.obj_id not in canvas_meshes:
            canvas_meshes[obj.obj_id] = to_pyrender_mesh(obj.parts)
        mesh = canvas_meshes[obj.obj_id]
    Kc = np.array(K, dtype=np.float64)
    Kc[0, 2] += ox
    Kc[1, 2] += oy
    scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.ones(3))
    radius = float(np.linalg.norm(vertices, axis=1).max())
    scene.add(make_camera(Kc, znear=0.01, zfar=float(T_m2c[2, 3]) + 4 * radius + 5.0), pose=CV_TO_GL)
    scene.add(mesh, pose=np.asarray(T_m2c, dtype=np.float64))
    _, depth = renderer.render(scene, width + 2 * ox, height + 2 * oy, depth_only=True)
    return depth.astype(np.float64) * 1000.0, (ox, oy)


@dataclass
class BopImage:
    """One test image as written: rgb uint8 [H, W, 3], depth_png uint16 [H, W], K [3, 3], and per instance
    its scene_gt and scene_gt_info entries and masks (bool [H, W])."""

    rgb: np.ndarray
    depth_png: np.ndarray
    K: np.ndarray
    gt: list[dict]
    gt_info: list[dict]
    masks: list[np.ndarray]
    masks_visib: list[np.ndarray]


def annotate(record: ImageRecord, renderer, objects: dict, meshes: dict, canvas_meshes: dict) -> BopImage:
    """BOP ground truth of a rendered scene (`vpog.data.scenes.render_scene`'s record), computed as
    calc_gt_info.py / calc_gt_masks.py compute it from the written depth image.

    `objects` {obj_id: ObjectModel} holds the scene's objects; `meshes`, `canvas_meshes`: see
    `render_object_depth`.
    """
    K = np.asarray(record.K, dtype=np.float64)
    H, W = record.depth.shape
    depth_png = depth_to_png(record.depth, DEPTH_SCALE)
    dist_scene = distance_image(depth_png.astype(np.float64) * DEPTH_SCALE, K)
    gt, infos, masks, visibs = [], [], [], []
    for inst in record.instances:
        T = np.asarray(inst.T_m2c, dtype=np.float64)
        canvas, (ox, oy) = render_object_depth(renderer, objects[inst.obj_id], T, K, W, H, meshes, canvas_meshes)
        depth_obj = canvas[oy:oy + H, ox:ox + W]
        dist_obj = distance_image(depth_obj, K)
        mask = dist_obj > 0
        visib = visible_mask(dist_scene, dist_obj)
        px_all = int((canvas > 0).sum())
        px_visib = int(visib.sum())
        infos.append({
            "bbox_obj": bbox_2d(canvas > 0, (ox, oy)) if px_visib > 0 else [-1, -1, -1, -1],
            "bbox_visib": bbox_2d(visib) if px_visib > 0 else [-1, -1, -1, -1],
            "px_count_all": px_all,
            "px_count_valid": int((dist_scene[mask] > 0).sum()),
            "px_count_visib": px_visib,
            "visib_fract": float(px_visib / px_all) if px_all > 0 else 0.0,
        })
        gt.append({"cam_R_m2c": T[:3, :3].reshape(-1).tolist(), "cam_t_m2c": (T[:3, 3] * 1000.0).tolist(),
                   "obj_id": int(inst.obj_id)})
        masks.append(mask)
        visibs.append(visib)
    return BopImage(rgb=record.rgb, depth_png=depth_png, K=K, gt=gt, gt_info=infos, masks=masks, masks_visib=visibs)


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESSION)


def scene_dir(root: str | Path, scene_id: int) -> Path:
    return Path(root) / SPLIT / f"{int(scene_id):06d}"


def scene_done(root: str | Path, scene_id: int) -> bool:
    """Whether scene `scene_id` is written (folders appear whole, see `write_scene`)."""
    return (scene_dir(root, scene_id) / "scene_gt_info.json").is_file()


def write_scene(root: str | Path, scene_id: int, images: dict[int, BopImage], tmp_root: str | Path) -> Path:
    """Write one scene folder `ROOT/test/{scene_id:06d}` atomically: built in `tmp_root` (same file system,
    outside `ROOT/test`, where BOP tools list scene folders) and renamed. Returns the folder."""
    final = scene_dir(root, scene_id)
    tmp = Path(tmp_root) / f"{int(scene_id):06d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("rgb", "depth", "mask", "mask_visib"):
        (tmp / sub).mkdir(parents=True)
    cameras, gts, infos = {}, {}, {}
    for im_id in sorted(images):
        im = images[im_id]
        _save_png(tmp / "rgb" / f"{im_id:06d}.png", im.rgb)
        _save_png(tmp / "depth" / f"{im_id:06d}.png", im.depth_png)
        for gt_id, (mask, visib) in enumerate(zip(im.masks, im.masks_visib)):
            _save_png(tmp / "mask" / f"{im_id:06d}_{gt_id:06d}.png", mask.astype(np.uint8) * 255)
            _save_png(tmp / "mask_visib" / f"{im_id:06d}_{gt_id:06d}.png", visib.astype(np.uint8) * 255)
        cameras[im_id] = {"cam_K": im.K.reshape(-1).tolist(), "depth_scale": DEPTH_SCALE}
        gts[im_id] = im.gt
        infos[im_id] = im.gt_info
    (tmp / "scene_camera.json").write_text(bop_json_text(cameras))
    (tmp / "scene_gt.json").write_text(bop_json_text(gts))
    (tmp / "scene_gt_info.json").write_text(bop_json_text(infos))
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def enumerate_test_targets(root: str | Path, scene_ids: list[int] | None = None,
                           min_visib_fract: float = MIN_VISIB_FRACT) -> list[dict]:
    """BOP19 targets of the written split, as enumerate_test_targets.py l.59-98 lists them.

    Per image (scenes, then images, in id order): one target per object id with at least one instance of
    `visib_fract >= min_visib_fract`, `inst_count` such instances, object ids in the order of their first
    such instance in scene_gt.json.
    """
    root = Path(root)
    if scene_ids is None:
        scene_ids = sorted(int(p.name) for p in (root / SPLIT).iterdir() if p.is_dir() and p.name.isdigit())
    targets = []
    for scene_id in scene_ids:
        folder = scene_dir(root, scene_id)
        gts = {int(k): v for k, v in json.loads((folder / "scene_gt.json").read_text()).items()}
        infos = {int(k): v for k, v in json.loads((folder / "scene_gt_info.json").read_text()).items()}
        for im_id in sorted(gts):
            counts: dict[int, int] = {}
            for gt, info in zip(gts[im_id], infos[im_id]):
                if info["visib_fract"] >= min_visib_fract:
                    counts[gt["obj_id"]] = counts.get(gt["obj_id"], 0) + 1
            targets.extend({"im_id": im_id, "inst_count": n, "obj_id": obj_id, "scene_id": scene_id}
                           for obj_id, n in counts.items())
    return targets


def write_targets(root: str | Path, scene_ids: list[int] | None = None) -> list[dict]:
    """ROOT/test_targets_bop19.json from the written scenes; returns the targets."""
    targets = enumerate_test_targets(root, scene_ids)
    save_bop_json(Path(root) / TARGETS_FILE, targets)
    return targets


def write_camera(root: str | Path, K: np.ndarray, width: int, height: int) -> None:
    """ROOT/camera.json, the dataset's camera as BOP datasets ship it (keys cx, cy, depth_scale, fx, fy,
    height, width; per-image cameras are in scene_camera.json)."""
    K = np.asarray(K, dtype=np.float64)
    save_bop_json(Path(root) / CAMERA_FILE, {"cx": float(K[0, 2]), "cy": float(K[1, 2]), "depth_scale": DEPTH_SCALE,
                                             "fx": float(K[0, 0]), "fy": float(K[1, 1]), "height": int(height),
                                             "width": int(width)})
