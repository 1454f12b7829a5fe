"""Object diameters the BOP way: the largest distance between two points of the object, in metres.

BOP defines an object's diameter as the largest distance between two of its model points (bop_toolkit
`misc.calc_pts_diameter`); the labels' depth tolerance (0.02 x diameter), the pose loss and every
evaluation threshold scale with it, so it must be the real one, in the query world's metres.

Where a training set's diameters come from, in order (`TrainingSource.diameter`):

1. `models_info.json`'s `diameter` (millimetres, BOP's meaning): vpog's own sets and BOP sets;
2. the object's mesh, where the set's layout has one: MegaPose-GSO `models/models_normalized/{gso_id}/
   meshes/model.obj` and MegaPose-ShapeNet `models/models_orig/{synset}/{source}/models/
   model_normalized.obj` (GigaPose's download layout; without `models/` as MegaPose has them), normalised
   meshes that MegaPose scales by 0.1 into its scenes (megapose `gso_dataset.py` and
   `shapenet_object_dataset.py`, `scaling_factor=0.1`);
3. the templates themselves: the depth maps of `DIAMETER_VIEWS` well-spread views back-projected into the model
   frame (query-world metres) are points of the object's surface, and their diameter is the object's to
   about a pixel's footprint (within 1% at GigaPose's 640x480).

GigaPose's `diameter.json` is not used: it holds twice the bounding-box diagonal of the normalised mesh
in its 10x template world (its `render_gso_templates.py`, `get_obj_diameter`), the camera distance of
its templates rather than a diameter (even halved and converted, a bounding-box diagonal exceeds the
diameter by up to sqrt(3), for a sphere).

Results are cached per set (`DiameterCache`): measuring an object on its templates takes under a second
of CPU (24 views at 640x480), a few hours of CPU for ShapeNet's ~50k objects, once.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import torch

from vpog.geometry import backproject, invert_pose, transform_points

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
MEGAPOSE_MESH_SCALE = 0.1  # normalised GSO / ShapeNet meshes -> metres in MegaPose's scenes
DIAMETER_VIEWS = 24  # template views back-projected to measure a diameter without a mesh


def point_set_diameter(points: np.ndarray) -> float:
    """Largest distance between two of `points` [N, 3] (exact). 0 for fewer than two points.

    The two farthest points lie on the convex hull, so the search runs over `hull_points`.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) < 2:
        return 0.0
    return _max_pairwise(hull_points(pts))


def hull_points(points: np.ndarray) -> np.ndarray:
    """A subset of finite `points` [N, 3] that holds every vertex of their convex hull (so their farthest
    pair): the hull's vertices by scipy's qhull when scipy is installed, else the points that can still
    reach the best distance found among extreme points along 64 directions."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) <= 64:
        return pts
    try:
        from scipy.spatial import ConvexHull, QhullError
    except ImportError:
        return _prune(pts)
    for options in (None, "QJ"):  # "QJ" joggles flat (coplanar) sets, which plain qhull rejects
        try:
            return pts[ConvexHull(pts, qhull_options=options).vertices]
        except (QhullError, ValueError):
            continue
    return _prune(pts)


def _prune(pts: np.ndarray) -> np.ndarray:
    """Points that can belong to a farthest pair, from a lower bound over extreme points."""
    dirs = np.random.default_rng(0).normal(size=(64, 3))
    proj = pts @ dirs.T
    extreme = np.unique(np.concatenate([proj.argmax(0), proj.argmin(0)]))
    lower = _max_pairwise(pts[extreme])
    centre = pts.mean(0)
    r = np.linalg.norm(pts - centre, axis=1)
    return pts[r >= lower - r.max() - 1e-12]


def _max_pairwise(pts: np.ndarray, chunk: int = 2048) -> float:
    best = 0.0
    for i in range(0, len(pts), chunk):
        a = pts[i:i + chunk]
        d2 = ((a[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


_OBJ_VERTEX = re.compile(rb"^v[ \t]+(\S+)[ \t]+(\S+)[ \t]+(\S+)", re.MULTILINE)


def read_mesh_vertices(path: str | os.PathLike) -> np.ndarray:
    """Vertices [N, 3] float64 of a mesh file, in the file's units (OBJ read directly; others by trimesh)."""
    path = Path(path)
    if path.suffix.lower() == ".obj":
        data = path.read_bytes()
        verts = np.array(_OBJ_VERTEX.findall(data), dtype=np.float64).reshape(-1, 3)
    else:
        import trimesh

        mesh = trimesh.load(str(path), force="mesh", process=False)
        verts = np.asarray(mesh.vertices, dtype=np.float64)
    if len(verts) == 0:
        raise ValueError(f"mesh {path} has no vertices")
    return verts


def megapose_mesh_path(root: Path, info: dict) -> Path | None:
    """The normalised mesh of a MegaPose-GSO / -ShapeNet object from its models_info entry, if present."""
    if "gso_id" in info:
        rel = Path("models_normalized") / str(info["gso_id"]) / "meshes" / "model.obj"
    elif "shapenet_synset_id" in info and "shapenet_source_id" in info:
        rel = Path("models_orig") / str(info["shapenet_synset_id"]) / str(info["shapenet_source_id"]) / "models" / \
            "model_normalized.obj"
    else:
        return None
    for base in (root / "models", root):  # GigaPose's download layout, then MegaPose's
        if (base / rel).is_file():
            return base / rel
    return None


def spread_views(directions: np.ndarray, num: int) -> np.ndarray:
    """Indices of `num` views whose directions [V, 3] spread over the sphere (farthest-point order)."""
    v = len(directions)
    if num >= v:
        return np.arange(v)
    chosen = [0]
    dist = 1.0 - directions @ directions[0]
    for _ in range(num - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - directions @ directions[nxt])
    return np.array(sorted(chosen))


def backproject_to_model(depth_m: np.ndarray, K: np.ndarray, T_m2c: np.ndarray, stride: int = 1) -> np.ndarray:
    """Pixels with depth > 0 of a depth map [H, W] (metres) -> model-frame points [N, 3] float64 (metres).

    `stride` keeps every `stride`-th row and column. Camera conventions: `vpog.geometry`.
    """
    d = np.asarray(depth_m)[::stride, ::stride]
    vs, us = np.nonzero(d > 0)
    uv = torch.from_numpy(np.stack([us, vs], axis=1) * float(stride))
    cam = backproject(uv, torch.from_numpy(d[vs, us].astype(np.float64)), torch.as_tensor(K, dtype=torch.float64))
    return transform_points(invert_pose(torch.as_tensor(T_m2c, dtype=torch.float64)), cam).numpy()


class DiameterCache:
    """Per-set JSON cache `{obj_id: (diameter_m, how)}`; dropped whole when its `scale_factor` differs."""

    def __init__(self, path: Path, scale_factor: float) -> None:
        self.path = Path(path)
        self.scale_factor = float(scale_factor)
        self.values: dict[int, tuple[float, str]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == CACHE_VERSION and float(data.get("scale_factor")) == self.scale_factor:
                    self.values = {int(k): (float(v[0]), str(v[1])) for k, v in data["diameters_m"].items()}
            except (ValueError, KeyError, TypeError, IndexError):
                logger.warning("ignoring unreadable diameter cache %s", self.path)

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "scale_factor": self.scale_factor,
                                       "diameters_m": {str(k): list(v) for k, v in sorted(self.values.items())}}))
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache location only costs a recomputation next time
            logger.warning("could not write the diameter cache %s: %s", self.path, exc)
