"""BOP 2019 pose errors (VSD, MSSD, MSPD) on one estimate and one ground-truth pose, in the toolkit's units.

Poses are BOP's: `R` [3, 3] and `t` [3] (or [3, 1]) map model points into the OpenCV camera frame, with
`t` and model points in millimetres. Errors come out as the toolkit writes them before normalisation:

- VSD  (Hodan et al. ECCVW 2016 / ECCV 2018), one value in [0, 1] per misalignment tolerance tau:
       e_tau = (#{p in V_gt & V_est : |D_gt(p) - D_est(p)| / diameter >= tau} + |V_gt xor V_est|) / |V_gt | V_est|
       where D_* are *distance* images (camera centre to surface, mm) and V_* the visibility masks below;
       1.0 for every tau when the union is empty.
- MSSD = min_{S in syms} max_x |(R_est x + t_est) - (R_gt S x + t_gt)|, millimetres;
- MSPD = the same maximum over the 2D projections with K, pixels.

Visibility (toolkit "bop19" mode, pixels with no measured depth count as visible):
    V_gt  = (D_gt > 0) & ((D_gt - D_test <= delta) | (D_test == 0))
    V_est = (D_est > 0) & ((D_est - D_test <= delta) | (D_test == 0))  |  (V_gt & (D_est > 0))
(differences taken in float32, as the toolkit does).

Depth rendering is injected: `vsd` takes a callable `render_depth(R, t) -> depth [H, W] float mm` for the
object and test camera at hand; `DepthRenderer` provides it with the project's pyrender renderer.

References: bop_toolkit (commit cea62d6) `bop_toolkit_lib/pose_error.py` (vsd l.68-156, mssd l.159-181,
mspd l.184-207), `misc.py` (get_symmetry_transformations l.42-89, project_pts l.92-106,
depth_im_to_dist_im_fast l.144-165, overlapping_sphere_projections l.317-339), `visibility.py`
(_estimate_visib_mask l.9-43 "bop19", estimate_visib_mask_gt/_est l.46-76),
`scripts/eval_bop19_pose.py` l.26-63 (parameters). The code here is written from those definitions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

# eval_bop19_pose.py l.29-46: VSD delta 15 mm (5 mm for ITODD), taus 0.05..0.5 step 0.05 (x diameter).
VSD_DELTA_MM = 15.0
VSD_DELTAS_MM = {"itodd": 5.0}
VSD_TAUS = tuple(float(x) for x in np.arange(0.05, 0.51, 0.05))  # the toolkit's exact floats
MAX_SYM_DISC_STEP = 0.01  # eval_bop19_pose.py l.63

_CHUNK = 1 << 14  # float64 elements per chunk of the symmetry-batched transforms (small: cache-resident)


def vsd_delta_mm(dataset_name: str) -> float:
    """The toolkit's VSD visibility tolerance for a dataset: 15 mm, 5 mm for ITODD (eval_bop19_pose.py l.30-43)."""
    return VSD_DELTAS_MM.get(dataset_name.split("_")[0], VSD_DELTA_MM)


# --------------------------------------------------------------------------------------------
# Input checks


def _as_R(R, name: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"{name} must have shape [3, 3], got {R.shape}")
    return R


def _as_t(t, name: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.shape not in ((3,), (3, 1)):
        raise ValueError(f"{name} must have shape [3] or [3, 1] (millimetres), got {t.shape}")
    return t.reshape(3)


def _as_K(K) -> np.ndarray:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape [3, 3], got {K.shape}")
    return K


def _as_points(pts) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f"pts must have shape [N, 3] with N > 0 (model frame, millimetres), got {pts.shape}")
    return pts


def _as_image(im, name: str) -> np.ndarray:
    im = np.asarray(im)
    if im.ndim != 2:
        raise ValueError(f"{name} must have shape [H, W], got {im.shape}")
    return im


# --------------------------------------------------------------------------------------------
# Symmetries


class Symmetries(NamedTuple):
    """Symmetry transforms of a model, x -> R x + t: R [M, 3, 3] float64, t [M, 3] float64 millimetres.
    The identity is first."""

    R: np.ndarray
    t: np.ndarray


def rotation_about_axis(axis, angle: float) -> np.ndarray:
    """Rotation by `angle` radians about `axis` [3] (normalised here), Rodrigues' formula -> [3, 3] float64."""
    a = np.asarray(axis, dtype=np.float64).reshape(3)
    a = a / np.linalg.norm(a)
    skew = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    c, s = math.cos(angle), math.sin(angle)
    return c * np.eye(3) + s * skew + (1.0 - c) * np.outer(a, a)


def symmetry_transforms(model_info: Mapping | None, max_sym_disc_step: float = MAX_SYM_DISC_STEP) -> Symmetries:
    """An object's symmetry transforms from its `models_info.json` entry, discretised as the toolkit does.

    Discrete symmetries are flattened row-major 4x4 matrices (translation in mm). A continuous symmetry
    `{"axis", "offset" (mm)}` becomes n = ceil(pi / max_sym_disc_step) rotations by 2 pi k / n about the
    axis through `offset`, k = 0..n-1 (so a point at the diameter's distance from the axis moves at most
    max_sym_disc_step x diameter between steps). With continuous symmetries every discrete one D (the
    identity included) is composed with every continuous one C as C o D; without, the discrete ones
    are returned (misc.get_symmetry_transformations l.51-89). -> Symmetries, M >= 1.
    """
    if not max_sym_disc_step > 0:
        raise ValueError(f"max_sym_disc_step must be > 0, got {max_sym_disc_step}")
    info = model_info or {}
    disc_R, disc_t = [np.eye(3)], [np.zeros(3)]
    for k, sym in enumerate(info.get("symmetries_discrete") or []):
        m = np.asarray(sym, dtype=np.float64).reshape(-1)
        if m.size != 16:
            raise ValueError(f"models_info symmetries_discrete[{k}] must hold 16 numbers (4x4), got {m.size}")
        m = m.reshape(4, 4)
        disc_R.append(m[:3, :3])
        disc_t.append(m[:3, 3])
    cont_R, cont_t = [], []
    for k, sym in enumerate(info.get("symmetries_continuous") or []):
        axis = np.asarray(sym.get("axis", ()), dtype=np.float64).reshape(-1)
        offset = np.asarray(sym.get("offset", (0.0, 0.0, 0.0)), dtype=np.float64).reshape(-1)
        if axis.size != 3 or offset.size != 3 or not np.linalg.norm(axis) > 0:
            raise ValueError(f"models_info symmetries_continuous[{k}] needs a non-zero 3-vector 'axis' and a "
                             f"3-vector 'offset' (mm), got {sym}")
        n = int(np.ceil(np.pi / max_sym_disc_step))
        step = 2.0 * np.pi / n
        for i in range(n):
            R = rotation_about_axis(axis, i * step)
            cont_R.append(R)
            cont_t.append(offset - R @ offset)
    if not cont_R:
        return Symmetries(np.stack(disc_R), np.stack(disc_t))
    out_R, out_t = [], []
    for Rd, td in zip(disc_R, disc_t):
        for Rc, tc in zip(cont_R, cont_t):
            out_R.append(Rc @ Rd)
            out_t.append(Rc @ td + tc)
    return Symmetries(np.stack(out_R), np.stack(out_t))


def _check_syms(syms: Symmetries | None) -> Symmetries:
    if syms is None:
        return Symmetries(np.eye(3)[None], np.zeros((1, 3)))
    R, t = np.asarray(syms[0], dtype=np.float64), np.asarray(syms[1], dtype=np.float64)
    if R.ndim != 3 or R.shape[1:] != (3, 3) or t.shape != (len(R), 3) or len(R) == 0:
        raise ValueError(f"syms must be (R [M, 3, 3], t [M, 3]) with M >= 1, got {R.shape} and {t.shape}")
    return Symmetries(R, t)


# --------------------------------------------------------------------------------------------
# Geometry


def transform_points(pts: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """R pts + t: pts [N, 3], R [3, 3], t [3] -> [N, 3] (misc.transform_pts_Rt)."""
    return (R @ pts.T + t.reshape(3, 1)).T


def project_points(pts: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Pixel coordinates [N, 2] of model points pts [N, 3] (mm) under (R, t mm) and K (misc.project_pts: the
    pixel grid's integer coordinates are pixel centres)."""
    P = K @ np.hstack([R, t.reshape(3, 1)])  # [3, 4]
    x = P[:, :3] @ pts.T + P[:, 3:]
    return (x[:2] / x[2]).T


def _sym_poses(R_gt: np.ndarray, t_gt: np.ndarray, syms: Symmetries) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth poses composed with each symmetry: R_gt S_R [M, 3, 3], R_gt S_t + t_gt [M, 3]."""
    return R_gt @ syms.R, syms.t @ R_gt.T + t_gt


def _max_sym_distance(pts_est: np.ndarray, pts: np.ndarray, Rs: np.ndarray, ts: np.ndarray,
                      K: np.ndarray | None) -> float:
    """min over poses (Rs [M, 3, 3], ts [M, 3]) of max over points of |pts_est - pose(pts)| in 3D (K None) or
    2D (pts_est projected, poses projected with K)."""
    pts_t = np.ascontiguousarray(pts.T)  # [3, N]: coordinates contiguous, cache-friendly small chunks
    est_t = np.ascontiguousarray(pts_est.T)[None]  # [1, 3 or 2, N]
    per = max(1, _CHUNK // (3 * len(pts)))
    best = math.inf
    for i in range(0, len(Rs), per):
        q = np.matmul(Rs[i:i + per], pts_t)  # [m, 3, N]
        q += ts[i:i + per, :, None]
        if K is not None:
            q = np.matmul(K, q)
            q = q[:, :2] / q[:, 2:]
        q -= est_t
        q *= q
        d2 = q.sum(axis=1).max(axis=1)  # [m]
        best = min(best, float(np.sqrt(d2.min())))
    return best


def mssd(R_est, t_est, R_gt, t_gt, pts, syms: Symmetries | None = None) -> float:
    """Maximum Symmetry-aware Surface Distance, millimetres (pose_error.mssd l.159-181).

    R_* [3, 3], t_* [3] mm (model to camera); pts [N, 3] model vertices, mm; syms from
    `symmetry_transforms` (None: no symmetry)."""
    R_est, t_est = _as_R(R_est, "R_est"), _as_t(t_est, "t_est")
    R_gt, t_gt = _as_R(R_gt, "R_gt"), _as_t(t_gt, "t_gt")
    pts = _as_points(pts)
    Rs, ts = _sym_poses(R_gt, t_gt, _check_syms(syms))
    return _max_sym_distance(transform_points(pts, R_est, t_est), pts, Rs, ts, None)


def mspd(R_est, t_est, R_gt, t_gt, K, pts, syms: Symmetries | None = None) -> float:
    """Maximum Symmetry-aware Projection Distance, pixels (pose_error.mspd l.184-207).

    As `mssd`, with the camera matrix K [3, 3] of the test image."""
    R_est, t_est = _as_R(R_est, "R_est"), _as_t(t_est, "t_est")
    R_gt, t_gt = _as_R(R_gt, "R_gt"), _as_t(t_gt, "t_gt")
    K, pts = _as_K(K), _as_points(pts)
    Rs, ts = _sym_poses(R_gt, t_gt, _check_syms(syms))
    return _max_sym_distance(project_points(pts, K, R_est, t_est), pts, Rs, ts, K)


def sphere_projections_overlap(radius_mm: float, t_a, t_b) -> bool:
    """Whether the image discs of two spheres of `radius_mm` centred at t_a, t_b [3] (mm, camera frame)
    overlap, approximately: |t_a/z_a - t_b/z_b| (normalised image plane) < radius (1/z_a + 1/z_b); False when
    a centre has z = 0 (misc.overlapping_sphere_projections l.317-339). The toolkit gives VSD = 1 for
    every tau without rendering when this is False (eval_calc_errors.py l.396-416)."""
    a, b = _as_t(t_a, "t_a"), _as_t(t_b, "t_b")
    if a[2] == 0 or b[2] == 0:
        return False
    dist = np.linalg.norm((a / a[2])[:2] - (b / b[2])[:2])
    return bool(dist < radius_mm * (1.0 / a[2] + 1.0 / b[2]))


# --------------------------------------------------------------------------------------------
# VSD


def depth_to_distance(depth: np.ndarray, K) -> np.ndarray:
    """Distance image [H, W] float64: |X| of the point X at depth[v, u] (its z, mm) seen by pixel (u, v), whose
    centre is at integer coordinates; 0 where depth is 0 (misc.depth_im_to_dist_im_fast l.144-165)."""
    depth = _as_image(depth, "depth")
    K = _as_K(K)
    h, w = depth.shape
    xs = (np.arange(w, dtype=np.float64) - K[0, 2]) / K[0, 0]
    ys = (np.arange(h, dtype=np.float64) - K[1, 2]) / K[1, 1]
    d = depth.astype(np.float64)
    return np.sqrt((xs[None, :] * d) ** 2 + (ys[:, None] * d) ** 2 + d ** 2)


def _visible(dist_test: np.ndarray, dist_model: np.ndarray, delta: float) -> np.ndarray:
    # visibility.py l.34-38 ("bop19"): the difference in float32; no test depth counts as visible.
    diff = dist_model.astype(np.float32) - dist_test.astype(np.float32)
    return ((diff <= delta) | (dist_test == 0)) & (dist_model > 0)


def visible_mask_gt(dist_test: np.ndarray, dist_gt: np.ndarray, delta: float) -> np.ndarray:
    """Visible part of the model in the ground-truth pose, bool [H, W] (visibility.estimate_visib_mask_gt).
    dist_*: distance images [H, W], mm; delta: tolerance, mm."""
    dist_test, dist_gt = _as_image(dist_test, "dist_test"), _as_image(dist_gt, "dist_gt")
    if dist_test.shape != dist_gt.shape:
        raise ValueError(f"dist_test and dist_gt must have the same shape, got {dist_test.shape} and {dist_gt.shape}")
    return _visible(dist_test, dist_gt, delta)


def visible_mask_est(dist_test: np.ndarray, dist_est: np.ndarray, visib_gt: np.ndarray, delta: float) -> np.ndarray:
    """Visible part of the model in the estimated pose, bool [H, W]: visible by the depth test, or covered by
    the model where the ground truth is visible (visibility.estimate_visib_mask_est; Hodan et al. ECCVW'16
    eq. 14: an estimate is not excused for hiding behind the true object)."""
    dist_test, dist_est = _as_image(dist_test, "dist_test"), _as_image(dist_est, "dist_est")
    visib_gt = _as_image(visib_gt, "visib_gt")
    if not dist_test.shape == dist_est.shape == visib_gt.shape:
        raise ValueError(f"dist_test, dist_est and visib_gt must have the same shape, got {dist_test.shape}, "
                         f"{dist_est.shape} and {visib_gt.shape}")
    return _visible(dist_test, dist_est, delta) | (visib_gt.astype(bool) & (dist_est > 0))


def vsd_from_distance(dist_test, dist_est, dist_gt, delta: float, taus, diameter: float,
                      normalized_by_diameter: bool = True) -> np.ndarray:
    """VSD for each tau [T] from distance images [H, W] (mm, 0 = none; see `depth_to_distance`) of the test
    scene and of the model rendered in the estimated and the ground-truth pose.

    delta: visibility tolerance, mm; taus: misalignment tolerances, x diameter when normalized_by_diameter
    (BOP19) else mm; diameter: mm. Step cost, as pose_error.vsd l.109-156 with cost_type="step".
    """
    dist_test = _as_image(dist_test, "dist_test")
    dist_est, dist_gt = _as_image(dist_est, "dist_est"), _as_image(dist_gt, "dist_gt")
    if not dist_test.shape == dist_est.shape == dist_gt.shape:
        raise ValueError(f"the test, estimate and ground-truth images must have the same shape, got "
                         f"{dist_test.shape}, {dist_est.shape} and {dist_gt.shape}")
    taus = np.asarray(taus, dtype=np.float64).reshape(-1)
    visib_gt = _visible(dist_test, dist_gt, delta)
    visib_est = _visible(dist_test, dist_est, delta) | (visib_gt & (dist_est > 0))
    inter = visib_gt & visib_est
    union_count = int((visib_gt | visib_est).sum())
    if union_count == 0:
        return np.ones(len(taus))
    comp_count = union_count - int(inter.sum())
    dists = np.abs(dist_gt[inter] - dist_est[inter])
    if normalized_by_diameter:
        dists = dists / diameter
    wrong = (dists[:, None] >= taus[None, :]).sum(axis=0)  # step cost per tau
    return (wrong + comp_count) / float(union_count)


def vsd_from_depth(depth_test, depth_est, depth_gt, K, delta: float, taus, diameter: float,
                   normalized_by_diameter: bool = True) -> np.ndarray:
    """VSD for each tau [T] from the test depth and the model rendered in both poses (all [H, W], mm, 0 = none)
    seen with K [3, 3]; the other arguments as `vsd_from_distance` (pose_error.vsd l.104-156)."""
    return vsd_from_distance(depth_to_distance(depth_test, K), depth_to_distance(depth_est, K),
                             depth_to_distance(depth_gt, K), delta, taus, diameter, normalized_by_diameter)


def vsd(R_est, t_est, R_gt, t_gt, depth_test, K, render_depth: Callable[[np.ndarray, np.ndarray], np.ndarray],
        delta: float, taus, diameter: float, normalized_by_diameter: bool = True) -> np.ndarray:
    """Visible Surface Discrepancy for each tau -> [T] (pose_error.vsd l.68-156, step cost).

    R_* [3, 3], t_* [3] mm; depth_test [H, W] mm (0 = no measurement); K [3, 3];
    render_depth(R, t) -> depth [H, W] mm of the object under that pose, rendered with K at W x H
    (e.g. `DepthRenderer.bind(obj_id, K, W, H)`).
    """
    R_est, t_est = _as_R(R_est, "R_est"), _as_t(t_est, "t_est")
    R_gt, t_gt = _as_R(R_gt, "R_gt"), _as_t(t_gt, "t_gt")
    return vsd_from_depth(depth_test, render_depth(R_est, t_est), render_depth(R_gt, t_gt), K, delta, taus,
                          diameter, normalized_by_diameter)


# --------------------------------------------------------------------------------------------
# Depth rendering


class DepthRenderer:
    """Depth images of BOP models (PLY, millimetres) under BOP poses, through `vpog.data.render.Renderer`.

    model_path: obj_id -> mesh file (e.g. `BopDataset.eval_model_path`), or a mapping. Each object's file
    is loaded on first use and kept (one pyrender mesh per object and image size). The scene is in
    millimetres, so depth comes back in mm.
    Faces are drawn from both sides (no back-face culling), as the toolkit's renderers do.

    pixels: "toolkit" samples pixel (u, v) at image point (u + 0.5, v + 0.5), as bop_toolkit's vispy
    renderer does (its projection, renderer_vispy._calc_calib_proj l.187-233, puts pixel edges at integer
    coordinates), so VSD matches the toolkit's numbers; "centre" samples at (u, v), the convention of
    `depth_to_distance`, `project_points` and the rest of vpog.
    """

    def __init__(self, model_path: Callable[[int], str | Path] | Mapping[int, str | Path],
                 pixels: Literal["toolkit", "centre"] = "toolkit", renderer=None):
        if pixels not in ("toolkit", "centre"):
            raise ValueError(f"pixels must be 'toolkit' or 'centre', got {pixels!r}")
        from vpog.data.render import Renderer

        self._model_path = model_path
        self.pixels = pixels
        self._renderer = renderer if renderer is not None else Renderer()
        self._owns_renderer = renderer is None
        self._parts: dict[int, tuple[list, np.ndarray]] = {}  # obj_id -> (trimesh parts, bbox corners mm)
        self._meshes: dict[tuple[int, int, int], object] = {}  # (obj_id, width, height) -> pyrender mesh

    def _mesh(self, obj_id: int, size: tuple[int, int]):
        """(pyrender mesh, bounding-box corners [8, 3] mm) of an object for the GL context of image `size`.

        A pyrender mesh can live in one GL context only, and `Renderer` keeps one context per image size,
        so the file is loaded once and a mesh is made per size."""
        obj_id = int(obj_id)
        if obj_id not in self._parts:
            from vpog.data.meshes import load_mesh_parts

            path = self._model_path[obj_id] if isinstance(self._model_path, Mapping) else self._model_path(obj_id)
            parts = load_mesh_parts(path)
            verts = np.concatenate([np.asarray(p.vertices, dtype=np.float64) for p in parts])
            lo, hi = verts.min(axis=0), verts.max(axis=0)
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            self._parts[obj_id] = (parts, corners)
        key = (obj_id, *size)
        if key not in self._meshes:
            from vpog.data.render import to_pyrender_mesh

            mesh = to_pyrender_mesh(self._parts[obj_id][0])
            for prim in mesh.primitives:
                prim.material.doubleSided = True
            self._meshes[key] = mesh
        return self._meshes[key], self._parts[obj_id][1]

    def render(self, obj_id: int, R, t, K, width: int, height: int) -> np.ndarray:
        """Depth [height, width] float32, mm (0 where the model is not drawn) of object `obj_id` at R [3, 3],
        t [3] mm, seen by a camera K [3, 3] at the origin."""
        from vpog.data.render import CV_TO_GL, _import_pyrender, make_camera

        R, t, K = _as_R(R, "R"), _as_t(t, "t"), _as_K(K)
        if int(width) <= 0 or int(height) <= 0:
            raise ValueError(f"width and height must be positive, got {width} x {height}")
        mesh, corners = self._mesh(obj_id, (int(width), int(height)))
        z = transform_points(corners, R, t)[:, 2]
        if z.max() <= 0:  # the model is behind the camera
            return np.zeros((int(height), int(width)), dtype=np.float32)
        # Clip planes around the model's bounding box (as the toolkit's renderer), with a margin.
        zfar = float(z.max()) * 1.01 + 1.0
        znear = max(float(z.min()) * 0.99 - 1.0, 1e-3 * zfar)
        if self.pixels == "toolkit":
            K = K.copy()
            K[0, 2] -= 0.5
            K[1, 2] -= 0.5
        pyrender = _import_pyrender()
        scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.ones(3))
        scene.add(make_camera(K, znear=znear, zfar=zfar), pose=CV_TO_GL)
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, t
        scene.add(mesh, pose=T)
        _, depth = self._renderer.render(scene, int(width), int(height), depth_only=True)
        return depth

    def bind(self, obj_id: int, K, width: int, height: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """`render_depth(R, t)` for `vsd`: this object, camera and image size."""
        return lambda R, t: self.render(obj_id, R, t, K, width, height)

    def close(self) -> None:
        self._parts, self._meshes = {}, {}
        if self._owns_renderer:
            self._renderer.close()

    def __enter__(self) -> DepthRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
