"""A tiny BOP dataset whose depth images are rendered, so that ground-truth poses score VSD 0, for the scorer tests.

Files are written as bop_toolkit's inout does (the writers of `bop_fixture.py`: save_json, save_depth with
depth_scale, ASCII PLY in millimetres, cam_t_m2c in mm). Depth images are rendered with
`vpog.bop.pose_error.DepthRenderer` (so this needs EGL): a wall at 900 mm behind the objects, each pixel
the nearest surface; visib_fract is the share of an instance's rendered pixels that are the nearest.

Scene 1 (camera K below, W x H = 64 x 48):
    image 0: object 1, object 2            targets: 1 x obj 1, 1 x obj 2
    image 1: object 1 twice, object 2 behind the wall (visib_fract 0: not a target, ignored)
                                           targets: 2 x obj 1
    image 2: object 2                      targets: 1 x obj 2
Object 1 is a 40 x 30 x 20 mm box without symmetry; object 2 a 50 x 20 x 16 mm box with its three
180-degree turns as discrete symmetries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.bop.bop_fixture import (
    box_mesh,
    rotation,
    save_depth_like_toolkit,
    save_json_like_toolkit,
    save_ply_like_toolkit,
)

WIDTH, HEIGHT = 64, 48
K = np.array([[70.0, 0.0, 31.7], [0.0, 70.0, 23.6], [0.0, 0.0, 1.0]])
WALL_MM = 900.0
DEPTH_SCALE = 0.1
SIZES = {1: (40.0, 30.0, 20.0), 2: (50.0, 20.0, 16.0)}
FLIPS = {axis: rotation(axis, 180.0) for axis in "xyz"}
POSES = {  # im_id -> [(obj_id, R, t mm)]
    0: [
        (1, rotation("x", 20) @ rotation("y", 10), np.array([-12.0, 4.0, 420.0])),
        (2, rotation("z", 30), np.array([18.0, -6.0, 460.0])),
    ],
    1: [
        (1, rotation("z", -40), np.array([-14.0, 0.0, 400.0])),
        (1, rotation("y", 25), np.array([16.0, 5.0, 430.0])),
        (2, np.eye(3), np.array([0.0, 12.0, 1000.0])),
    ],
    2: [(2, rotation("x", 15) @ rotation("z", 60), np.array([0.0, 0.0, 450.0]))],
}


def _flat(m: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(m).reshape(-1)]


def write_scored_dataset(root: Path) -> dict:
    """Write the dataset under `root` (its name is the dataset name). Returns {"poses", "targets", "visib"}."""
    from vpog.bop.pose_error import DepthRenderer

    root = Path(root)
    info = {}
    for obj_id, size in SIZES.items():
        v, f = box_mesh(size)
        save_ply_like_toolkit(root / "models" / f"obj_{obj_id:06d}.ply", v, np.full((len(v), 3), 180), f)
        lo, hi = v.min(0), v.max(0)
        info[str(obj_id)] = {
            "diameter": float(np.linalg.norm(hi - lo)),
            "min_x": float(lo[0]),
            "min_y": float(lo[1]),
            "min_z": float(lo[2]),
            "size_x": float(hi[0] - lo[0]),
            "size_y": float(hi[1] - lo[1]),
            "size_z": float(hi[2] - lo[2]),
        }
    sym = []
    for R in FLIPS.values():
        T = np.eye(4)
        T[:3, :3] = R
        sym.append(_flat(T))
    info["2"]["symmetries_discrete"] = sym
    save_json_like_toolkit(root / "models" / "models_info.json", info)

    scene = root / "test" / "000001"
    cams, gts, infos, targets, visib_all = {}, {}, {}, [], {}
    with DepthRenderer(lambda o: root / "models" / f"obj_{o:06d}.ply") as renderer:
        for im_id, insts in POSES.items():
            renders = [renderer.render(o, R, t, K, WIDTH, HEIGHT) for o, R, t in insts]
            depth = np.full((HEIGHT, WIDTH), WALL_MM)
            for d in renders:
                depth = np.where((d > 0) & (d < depth), d, depth)
            cams[im_id] = {"cam_K": _flat(K), "depth_scale": DEPTH_SCALE}
            gts[im_id] = [{"cam_R_m2c": _flat(R), "cam_t_m2c": _flat(t), "obj_id": o} for o, R, t in insts]
            infos[im_id], counts = [], {}
            for (o, _, _), d in zip(insts, renders):
                px_all = int((d > 0).sum())
                px_visib = int(((d > 0) & (np.abs(d - depth) < 1e-3)).sum())
                visib = px_visib / px_all if px_all else 0.0
                infos[im_id].append({"px_count_all": px_all, "px_count_visib": px_visib, "visib_fract": visib})
                if visib >= 0.1:
                    counts[o] = counts.get(o, 0) + 1
            visib_all[im_id] = [e["visib_fract"] for e in infos[im_id]]
            targets += [
                {"im_id": im_id, "inst_count": n, "obj_id": o, "scene_id": 1} for o, n in sorted(counts.items())
            ]
            save_depth_like_toolkit(scene / "depth" / f"{im_id:06d}.png", depth, DEPTH_SCALE)
            (scene / "rgb").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((HEIGHT, WIDTH, 3), np.uint8)).save(scene / "rgb" / f"{im_id:06d}.png")
    save_json_like_toolkit(scene / "scene_camera.json", cams)
    save_json_like_toolkit(scene / "scene_gt.json", gts)
    save_json_like_toolkit(scene / "scene_gt_info.json", infos)
    save_json_like_toolkit(root / "test_targets_bop19.json", targets)
    return {"poses": POSES, "targets": targets, "visib": visib_all}
