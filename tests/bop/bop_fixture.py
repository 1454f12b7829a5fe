"""A tiny BOP dataset written the way the BOP toolkit writes one (no vpog code), for the reader tests.

Each writer follows bop_toolkit (commit cea62d6) `bop_toolkit_lib/inout.py`:
- `save_json` l.101-142: a dict is written one `"key": json.dumps(value, sort_keys=True)` line per key, keys
  sorted, inside `{\\n ... }` with no trailing newline; a list one `json.dumps(elem, sort_keys=True)` per line.
- `save_scene_camera` l.236-246: cam_K flattened row-major to 9 floats, plus depth_scale (and the world
  pose cam_R_w2c / cam_t_w2c, which some datasets carry).
- `save_scene_gt` l.286-303: cam_R_m2c flattened row-major, cam_t_m2c 3 floats in millimetres, obj_id.
- `save_depth` l.56-70: 16-bit greyscale PNG of round(depth_mm / depth_scale).
- `save_ply2` l.803-900: ASCII PLY, `{:.4f}` vertices, uchar colours, `list uchar int vertex_indices`.
scene_gt_info.json fields are those of `scripts/calc_gt_info.py`; test_targets_bop19.json entries those
of `scripts/enumerate_test_targets.py` ({"im_id", "inst_count", "obj_id", "scene_id"}).
CNOS detections follow CNOS `src/model/utils.py` (mask_to_rle: uncompressed column-major counts from a
run of zeros, size [H, W]; boxes x, y, w, h; the image's time on every detection).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def save_json_like_toolkit(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        if isinstance(content, dict):
            f.write("{\n")
            items = sorted(content.items(), key=lambda kv: kv[0])
            for i, (k, v) in enumerate(items):
                f.write(f'  "{k}": {json.dumps(v, sort_keys=True)}')
                f.write(",\n" if i != len(items) - 1 else "\n")
            f.write("}")
        else:
            f.write("[\n")
            for i, e in enumerate(content):
                f.write(f"  {json.dumps(e, sort_keys=True)}")
                f.write(",\n" if i != len(content) - 1 else "\n")
            f.write("]")


def save_depth_like_toolkit(path: Path, depth_mm: np.ndarray, depth_scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = np.round(depth_mm / depth_scale).astype(np.uint16)
    Image.fromarray(raw).save(path)  # PIL writes uint16 as a 16-bit greyscale PNG


def save_ply_like_toolkit(path: Path, pts: np.ndarray, colors: np.ndarray, faces: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write("ply\nformat ascii 1.0\n")
        f.write(f"element vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\n")
        f.write("property uchar red\nproperty uchar green\nproperty uchar blue\n")
        f.write(f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
        for p, c in zip(pts, colors):
            f.write("{:.4f} {:.4f} {:.4f}".format(*p.astype(float)) + " {:d} {:d} {:d}\n".format(*c.astype(int)))
        for face in faces:
            f.write(" ".join(str(int(v)) for v in [len(face), *face]) + "\n")


def box_mesh(size_mm: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Vertices [8, 3] (mm, centred) and triangles [12, 3] of a box, outward facing."""
    sx, sy, sz = (s / 2 for s in size_mm)
    v = np.array([[x, y, z] for x in (-sx, sx) for y in (-sy, sy) for z in (-sz, sz)], dtype=np.float64)
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, c, d in quads:
        faces += [(a, b, c), (a, c, d)]
    return v, np.array(faces, dtype=np.int64)


def cnos_rle(mask: np.ndarray) -> dict:
    """CNOS's uncompressed RLE (column-major runs from a run of zeros), written without vpog code."""
    counts, last, run = [], 0, 0
    for value in mask.ravel(order="F"):
        if value != last:
            counts.append(run)
            run, last = 0, value
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def rotation(axis: str, deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return {"x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
            "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}[axis]


def write_tiny_bop(root: Path, with_gt: bool = True, gray: bool = False, width: int = 64, height: int = 48) -> dict:
    """Two objects, one scene (id 3) of two images (ids 0 and 7): image 0 holds both objects, image 7 object 1
    twice (one instance 5 % visible, so not a target). Returns what was written, for the assertions."""
    root.mkdir(parents=True, exist_ok=True)
    sizes = {1: (40.0, 30.0, 20.0), 5: (60.0, 20.0, 20.0)}
    info = {}
    for obj_id, size in sizes.items():
        v, f = box_mesh(size)
        save_ply_like_toolkit(root / "models" / f"obj_{obj_id:06d}.ply", v, np.full((8, 3), 200), f)
        lo, hi = v.min(0), v.max(0)
        info[str(obj_id)] = {"diameter": float(np.linalg.norm(hi - lo)), "min_x": lo[0], "min_y": lo[1],
                             "min_z": lo[2], "size_x": hi[0] - lo[0], "size_y": hi[1] - lo[1],
                             "size_z": hi[2] - lo[2]}
    info["5"]["symmetries_discrete"] = [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]
    save_json_like_toolkit(root / "models" / "models_info.json", info)

    K = np.array([[60.0, 0, 31.5], [0, 60.0, 23.5], [0, 0, 1]])
    scene = root / "test" / "000003"
    poses = {0: [(1, rotation("x", 20), [10.0, -5.0, 400.0], 0.9), (5, rotation("y", 35), [-30.0, 8.0, 520.0], 0.6)],
             7: [(1, rotation("z", -50), [0.0, 0.0, 350.0], 0.8), (1, np.eye(3), [40.0, 20.0, 600.0], 0.05)]}
    cams, gts, infos, targets, dets = {}, {}, {}, [], []
    rng = np.random.default_rng(0)
    for im_id, insts in poses.items():
        cams[im_id] = {"cam_K": K.reshape(-1).tolist(), "depth_scale": 0.1,
                       "cam_R_w2c": np.eye(3).reshape(-1).tolist(), "cam_t_w2c": [0.0, 0.0, 0.0]}
        gts[im_id] = [{"cam_R_m2c": R.reshape(-1).tolist(), "cam_t_m2c": list(t), "obj_id": o} for o, R, t, _ in insts]
        infos[im_id] = []
        for gt_id, (o, _, t, vis) in enumerate(insts):
            mask = np.zeros((height, width), np.uint8)
            u, v = int(K[0, 0] * t[0] / t[2] + K[0, 2]), int(K[1, 1] * t[1] / t[2] + K[1, 2])
            mask[max(v - 4, 0):v + 4, max(u - 5, 0):u + 5] = 255
            (scene / "mask_visib").mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(scene / "mask_visib" / f"{im_id:06d}_{gt_id:06d}.png")
            ys, xs = np.nonzero(mask)
            box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            infos[im_id].append({"bbox_obj": box, "bbox_visib": box, "px_count_all": int((mask > 0).sum() / vis),
                                 "px_count_valid": int((mask > 0).sum()), "px_count_visib": int((mask > 0).sum()),
                                 "visib_fract": vis})
            dets.append({"scene_id": 3, "image_id": im_id, "category_id": o, "bbox": box,
                         "score": float(0.5 + 0.1 * gt_id), "time": 0.25 + im_id,
                         "segmentation": cnos_rle(mask > 0)})
        counts: dict[int, int] = {}
        for o, _, _, vis in insts:
            if vis >= 0.1:
                counts[o] = counts.get(o, 0) + 1
        targets += [{"im_id": im_id, "inst_count": n, "obj_id": o, "scene_id": 3} for o, n in sorted(counts.items())]
        img = rng.integers(0, 255, (height, width) if gray else (height, width, 3), dtype=np.uint8)
        folder = scene / ("gray" if gray else "rgb")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{im_id:06d}.png")
        depth = np.full((height, width), 500.0)
        save_depth_like_toolkit(scene / "depth" / f"{im_id:06d}.png", depth, 0.1)
    save_json_like_toolkit(scene / "scene_camera.json", cams)
    if with_gt:
        save_json_like_toolkit(scene / "scene_gt.json", gts)
        save_json_like_toolkit(scene / "scene_gt_info.json", infos)
    save_json_like_toolkit(root / "test_targets_bop19.json", targets)
    save_json_like_toolkit(root / "detections.json", dets)
    return {"K": K, "poses": poses, "targets": targets, "info": info, "detections": dets}
