"""Pose-error metrics of docs/conventions.md §8, as the BOP challenge and the 6D pose literature define them.

All functions are plain PyTorch (CPU or GPU), batched over N estimates of *one* object (its model
points and symmetries are shared); the evaluation runner groups estimates by object.

Units: poses `T_m2c` are 4x4 in metres (docs/conventions.md §1); model points in metres; errors are returned in
the unit each metric is reported in (degrees, millimetres, metres or pixels, as named).

Definitions (Hodan et al., "BOP: Benchmark for 6D Object Pose Estimation", ECCV 2018 and the
BOP 2019+ evaluation; Hinterstoisser et al. ACCV 2012 for ADD / ADD-S):

- rotation error      e_R  = arccos((tr(R_est^T R_gt) - 1) / 2)                  degrees
- translation error   e_t  = |t_est - t_gt|                                        millimetres
- ADD                 e    = mean_x |T_est x - T_gt x|                            metres
- ADD-S               e    = mean_x min_y |T_gt x - T_est y|                      metres
- MSSD                e    = min_{S in syms} max_x |T_est x - T_gt S x|           metres
- MSPD                e    = min_{S in syms} max_x |pi(K, T_est x) - pi(K, T_gt S x)|   pixels
- recall at threshold th:    share of estimates with e < th (strict, as BOP's matching)
- average recall (AR): mean of the recalls over a list of thresholds:
  MSSD at (0.05, 0.10, ..., 0.50) x diameter, MSPD at (5, 10, ..., 50) x (image width / 640) px.

Symmetries come from BOP's `models_info.json` (`symmetries_discrete`: flattened 4x4 with the
translation in millimetres; `symmetries_continuous`: `{"axis", "offset" (mm)}`). A continuous
symmetry is discretised as the BOP toolkit does: `n = ceil(pi / max_sym_disc_step)` rotations by
`2 pi k / n`, k = 0..n-1 (the identity included, as the current toolkit), composed with every
discrete one, so that a point at the object's "diameter distance" from the axis moves by at most
`max_sym_disc_step x diameter` between consecutive steps (BOP default 0.01).

References: thodan/bop_toolkit `bop_toolkit_lib/pose_error.py` (mssd, mspd, add, adi, re, te) and
`misc.py` (get_symmetry_transformations); the code here is written from those definitions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from vpog.geometry import project, transform_points

MSSD_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 11))  # x object diameter
MSPD_THRESHOLDS = tuple(float(5 * k) for k in range(1, 11))  # pixels x (image width / 640)
ADD_THRESHOLD = 0.1  # x object diameter
RETRIEVAL_THRESHOLD_DEG = 15.0
BOP_MAX_SYM_DISC_STEP = 0.01

_CHUNK = 1 << 22  # elements per chunk of the pairwise computations (memory bound, not speed)


# --------------------------------------------------------------------------------------------
# Input checks


def _check_poses(name: str, T: torch.Tensor) -> None:
    if not isinstance(T, torch.Tensor) or T.dim() != 3 or tuple(T.shape[1:]) != (4, 4):
        shape = tuple(T.shape) if isinstance(T, torch.Tensor) else type(T).__name__
        raise ValueError(f"{name} must have shape [N, 4, 4], got {shape}")


def _check_pair(T_est: torch.Tensor, T_gt: torch.Tensor) -> None:
    _check_poses("T_est", T_est)
    _check_poses("T_gt", T_gt)
    if T_est.shape[0] != T_gt.shape[0]:
        raise ValueError(f"T_est and T_gt must hold the same number of poses, got {T_est.shape[0]} and "
                         f"{T_gt.shape[0]}")


def _check_points(points: torch.Tensor) -> None:
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must have shape [P, 3] with P > 0 (model frame, metres), got {shape}")


def _check_syms(syms: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if syms is None:
        return torch.eye(4, dtype=torch.float64, device=like.device)[None]
    if not isinstance(syms, torch.Tensor) or syms.dim() != 3 or tuple(syms.shape[1:]) != (4, 4) or not len(syms):
        shape = tuple(syms.shape) if isinstance(syms, torch.Tensor) else type(syms).__name__
        raise ValueError(f"syms must have shape [M, 4, 4] with M >= 1 (model frame, metres), got {shape}")
    return syms.to(device=like.device, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Symmetries


def axis_angle_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by `angle` [...] radians about unit-normalised `axis` [3] (Rodrigues) -> [..., 3, 3] float64."""
    a = axis.to(torch.float64)
    a = a / a.norm().clamp_min(1e-12)
    angle = torch.as_tensor(angle, dtype=torch.float64, device=a.device)
    Kx = torch.tensor([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]], dtype=torch.float64,
                      device=a.device)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=torch.float64, device=a.device)
    return eye + s * Kx + (1 - c) * (Kx @ Kx)


def symmetry_transforms(model_info: Mapping | None, max_sym_disc_step: float = BOP_MAX_SYM_DISC_STEP,
                        device=None) -> torch.Tensor:
    """The object's symmetry transforms from one `models_info.json` entry -> [M, 4, 4] float64, metres.

    The identity is always first. Discrete symmetries are read as flattened row-major 4x4 with the
    translation in millimetres; continuous ones (`axis`, `offset` mm) are discretised as BOP does
    (see the module docstring) and composed with each discrete one: `S = S_cont @ S_disc`.
    """
    if max_sym_disc_step <= 0:
        raise ValueError(f"max_sym_disc_step must be > 0, got {max_sym_disc_step}")
    info = model_info or {}
    disc = [torch.eye(4, dtype=torch.float64)]
    for k, sym in enumerate(info.get("symmetries_discrete") or []):
        m = torch.as_tensor(sym, dtype=torch.float64).flatten()
        if m.numel() != 16:
            raise ValueError(f"model_info['symmetries_discrete'][{k}] must hold 16 numbers (4x4), got {m.numel()}")
        m = m.reshape(4, 4).clone()
        m[:3, 3] /= 1000.0
        disc.append(m)
    cont = []
    for k, sym in enumerate(info.get("symmetries_continuous") or []):
        if "axis" not in sym:
            raise ValueError(f"model_info['symmetries_continuous'][{k}] needs an 'axis'")
        axis = torch.as_tensor(sym["axis"], dtype=torch.float64)
        offset = torch.as_tensor(sym.get("offset", (0.0, 0.0, 0.0)), dtype=torch.float64) / 1000.0
        if axis.numel() != 3 or offset.numel() != 3 or float(axis.norm()) == 0.0:
            raise ValueError(f"model_info['symmetries_continuous'][{k}] needs a non-zero 3-vector axis and a "
                             f"3-vector offset, got {sym}")
        n = int(math.ceil(math.pi / max_sym_disc_step))
        R = axis_angle_matrix(axis, torch.arange(n, dtype=torch.float64) * (2 * math.pi / n))  # [n, 3, 3]
        T = torch.zeros(n, 4, 4, dtype=torch.float64)
        T[:, :3, :3] = R
        T[:, :3, 3] = offset - R @ offset
        T[:, 3, 3] = 1
        cont.append(T)
    disc_t = torch.stack(disc)
    if cont:
        # Several continuous symmetries (a sphere) are uncommon; chain them like the toolkit's list.
        cont_t = torch.cat(cont)
        out = (cont_t[:, None] @ disc_t[None]).reshape(-1, 4, 4)
    else:
        out = disc_t
    return out.to(device) if device is not None else out


def is_symmetric(model_info: Mapping | None) -> bool:
    """Whether the object has any discrete or continuous symmetry (then ADD-S replaces ADD)."""
    info = model_info or {}
    return bool(info.get("symmetries_discrete")) or bool(info.get("symmetries_continuous"))


# --------------------------------------------------------------------------------------------
# Per-estimate errors


def _angle_of(rel: torch.Tensor) -> torch.Tensor:
    """Rotation angle of matrices rel [..., 3, 3] in degrees, as atan2(sin, cos) (accurate near 0 and 180)."""
    cos = (rel.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    skew = torch.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0],
                        rel[..., 1, 0] - rel[..., 0, 1]], dim=-1)
    return torch.rad2deg(torch.atan2(skew.norm(dim=-1) / 2, cos))


def rotation_error_deg(R_est: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotations, degrees. R_est, R_gt [N, 3, 3] -> [N] float64."""
    for name, R in (("R_est", R_est), ("R_gt", R_gt)):
        if not isinstance(R, torch.Tensor) or R.dim() != 3 or tuple(R.shape[1:]) != (3, 3):
            raise ValueError(f"{name} must have shape [N, 3, 3], got {tuple(R.shape)}")
    rel = R_est.to(torch.float64).transpose(-1, -2) @ R_gt.to(torch.float64)
    return _angle_of(rel)


def rotation_error_sym_deg(R_est: torch.Tensor, R_gt: torch.Tensor, syms: torch.Tensor | None) -> torch.Tensor:
    """Smallest rotation error over the ground truth's symmetric equivalents `R_gt S_R`, degrees. -> [N]."""
    S = _check_syms(syms, R_est)[:, :3, :3]  # [M, 3, 3]
    rel = R_est.to(torch.float64).transpose(-1, -2)[:, None] @ (R_gt.to(torch.float64)[:, None] @ S[None])
    return _angle_of(rel).amin(dim=1)  # [N, M] -> [N]


def translation_error_mm(t_est: torch.Tensor, t_gt: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between translations given in metres, reported in millimetres. [N, 3] -> [N]."""
    for name, t in (("t_est", t_est), ("t_gt", t_gt)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != 3:
            raise ValueError(f"{name} must have shape [N, 3] (metres), got {tuple(t.shape)}")
    return (t_est.to(torch.float64) - t_gt.to(torch.float64)).norm(dim=-1) * 1000.0


def add_error(T_est: torch.Tensor, T_gt: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """ADD: mean distance between model points under both poses, metres. T [N, 4, 4], points [P, 3] -> [N]."""
    _check_pair(T_est, T_gt)
    _check_points(points)
    x = points.to(device=T_est.device, dtype=torch.float64)
    a = transform_points(T_est.to(torch.float64), x.expand(len(T_est), -1, -1))
    b = transform_points(T_gt.to(torch.float64), x.expand(len(T_gt), -1, -1))
    return (a - b).norm(dim=-1).mean(dim=-1)


def adds_error(T_est: torch.Tensor, T_gt: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """ADD-S: mean over model points in the ground-truth pose of the distance to the closest model point in
    the estimated pose, metres. T_est, T_gt [N, 4, 4] (metres), points [P, 3] model frame, metres -> [N].

    e = mean_{x} min_{y} |T_gt x - T_est y| (Hinterstoisser et al. ACCV 2012; bop_toolkit
    `pose_error.adi` l.227-247 queries the ground-truth points against the estimated ones). The
    direction matters: an estimate that covers only part of the ground-truth surface is penalised for
    every ground-truth point it leaves far away.
    """
    _check_pair(T_est, T_gt)
    _check_points(points)
    x = points.to(device=T_est.device, dtype=torch.float64)
    P = len(x)
    out = torch.empty(len(T_est), dtype=torch.float64, device=T_est.device)
    rows = max(1, _CHUNK // max(P, 1))  # query points per chunk
    for n in range(len(T_est)):
        query = transform_points(T_gt[n].to(torch.float64), x)  # ground-truth pose: averaged over
        ref = transform_points(T_est[n].to(torch.float64), x)  # estimated pose: nearest neighbour in
        mins = [torch.cdist(query[i:i + rows], ref).amin(dim=1) for i in range(0, P, rows)]
        out[n] = torch.cat(mins).mean()
    return out


def _sym_max_distance(T_est, T_gt, points, syms, K=None) -> torch.Tensor:
    """min over S of max over x of the 3D (K None) or 2D distance between T_est x and T_gt S x. -> [N]."""
    x = points.to(device=T_est.device, dtype=torch.float64)
    S = _check_syms(syms, T_est)
    M, P = len(S), len(x)
    out = torch.empty(len(T_est), dtype=torch.float64, device=T_est.device)
    per = max(1, _CHUNK // max(P * 3, 1))  # symmetries per chunk
    for n in range(len(T_est)):
        est = transform_points(T_est[n].to(torch.float64), x)  # [P, 3]
        if K is not None:
            est = project(est, K[n].to(torch.float64))
        best = torch.tensor(float("inf"), dtype=torch.float64, device=T_est.device)
        for i in range(0, M, per):
            G = T_gt[n].to(torch.float64) @ S[i:i + per]  # [m, 4, 4]
            gt = transform_points(G, x.expand(len(G), -1, -1))  # [m, P, 3]
            if K is not None:
                gt = project(gt, K[n].to(torch.float64))
            best = torch.minimum(best, (est[None] - gt).norm(dim=-1).amax(dim=1).amin())
        out[n] = best
    return out


def mssd_error(T_est: torch.Tensor, T_gt: torch.Tensor, points: torch.Tensor,
               syms: torch.Tensor | None = None) -> torch.Tensor:
    """Maximum Symmetry-aware Surface Distance, metres. T [N, 4, 4], points [P, 3], syms [M, 4, 4] -> [N]."""
    _check_pair(T_est, T_gt)
    _check_points(points)
    return _sym_max_distance(T_est, T_gt, points, syms)


def mspd_error(T_est: torch.Tensor, T_gt: torch.Tensor, points: torch.Tensor, K: torch.Tensor,
               syms: torch.Tensor | None = None) -> torch.Tensor:
    """Maximum Symmetry-aware Projection Distance, pixels of the image of K [N, 3, 3] (or [3, 3]). -> [N]."""
    _check_pair(T_est, T_gt)
    _check_points(points)
    if not isinstance(K, torch.Tensor) or K.shape[-2:] != (3, 3) or K.dim() not in (2, 3):
        raise ValueError(f"K must have shape [N, 3, 3] or [3, 3], got {tuple(K.shape)}")
    K = K.expand(len(T_est), 3, 3) if K.dim() == 2 else K
    if len(K) != len(T_est):
        raise ValueError(f"K must hold one camera per pose ({len(T_est)}), got {len(K)}")
    return _sym_max_distance(T_est, T_gt, points, syms, K=K.to(T_est.device))


def view_angle_deg(d_a: torch.Tensor, d_b: torch.Tensor) -> torch.Tensor:
    """Angle between viewing directions d_a, d_b [N, 3] (normalised here), degrees -> [N].

    The template-retrieval error: the predicted best template's direction against the query's.
    """
    for name, d in (("d_a", d_a), ("d_b", d_b)):
        if not isinstance(d, torch.Tensor) or d.dim() != 2 or d.shape[1] != 3:
            raise ValueError(f"{name} must have shape [N, 3], got {tuple(d.shape)}")
    a = d_a.to(torch.float64)
    b = d_b.to(torch.float64)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


# --------------------------------------------------------------------------------------------
# Recalls


def recall(errors: torch.Tensor | Sequence[float], threshold: torch.Tensor | float) -> float:
    """Share of `errors` [N] strictly below `threshold` (a number or per-estimate [N]); NaN when N = 0.

    A NaN error (a failed estimate) counts as a miss.
    """
    e = torch.as_tensor(errors, dtype=torch.float64)
    if e.dim() != 1:
        raise ValueError(f"errors must have shape [N], got {tuple(e.shape)}")
    if e.numel() == 0:
        return float("nan")
    th = torch.as_tensor(threshold, dtype=torch.float64, device=e.device)
    if th.dim() not in (0, 1) or (th.dim() == 1 and th.shape[0] != e.shape[0]):
        raise ValueError(f"threshold must be a number or have shape [N] = [{e.shape[0]}], got {tuple(th.shape)}")
    return float((e < th).to(torch.float64).mean())


def average_recall(errors: torch.Tensor | Sequence[float], thresholds: torch.Tensor | Sequence[float]) -> float:
    """Mean over thresholds of `recall`. thresholds [T] (shared) or [N, T] (per estimate, e.g. x diameter)."""
    e = torch.as_tensor(errors, dtype=torch.float64)
    if e.dim() != 1:
        raise ValueError(f"errors must have shape [N], got {tuple(e.shape)}")
    if e.numel() == 0:
        return float("nan")
    th = torch.as_tensor(thresholds, dtype=torch.float64, device=e.device)
    if th.dim() == 1:
        th = th[None].expand(len(e), -1)
    if th.dim() != 2 or th.shape[0] != len(e) or th.shape[1] == 0:
        raise ValueError(f"thresholds must have shape [T] or [N, T] with N = {len(e)}, got {tuple(th.shape)}")
    return float((e[:, None] < th).to(torch.float64).mean())


def mssd_thresholds(diameter: torch.Tensor | float) -> torch.Tensor:
    """BOP MSSD thresholds (0.05..0.5 x diameter) for diameters [N] (metres) -> [N, 10] (or [10])."""
    d = torch.as_tensor(diameter, dtype=torch.float64)
    return d[..., None] * torch.tensor(MSSD_THRESHOLDS, dtype=torch.float64, device=d.device)


def mspd_thresholds(image_width: torch.Tensor | float) -> torch.Tensor:
    """BOP MSPD thresholds (5..50 px x width / 640) for image widths [N] (pixels) -> [N, 10] (or [10])."""
    w = torch.as_tensor(image_width, dtype=torch.float64)
    return (w[..., None] / 640.0) * torch.tensor(MSPD_THRESHOLDS, dtype=torch.float64, device=w.device)
