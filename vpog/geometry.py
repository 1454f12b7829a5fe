"""Camera and pose geometry shared by every part of vpog (docs/conventions.md §1).

Conventions, in one place:
- Geometry in memory is float32 metres, OpenCV camera (x right, y down, z forward).
- A pose `T_m2c` is a 4x4 model-to-camera transform: `X_cam = R @ X_model + t`.
- Pixel `(u, v)` = (column, row); integer coordinates are pixel centres.
- The viewing direction of a pose is the unit vector from the object origin to the camera,
  in model coordinates: `d = c / |c|`, `c = -R^T t`.
- Crops are 224x224 with 16x16 patches on a 14x14 grid; patch `j = 14 iy + ix` covers
  u in [16 ix, 16 ix + 15], v in [16 iy, 16 iy + 15], centre (16 ix + 7.5, 16 iy + 7.5),
  anchor pixel (16 ix + 8, 16 iy + 8).
- Quaternions are scalar-first `(w, x, y, z)`; a 7-vector pose is `[tx, ty, tz, qw, qx, qy, qz]`.
"""

from __future__ import annotations

import math

import torch

CROP_SIZE = 224
PATCH_SIZE = 16
GRID_SIZE = CROP_SIZE // PATCH_SIZE  # 14
NUM_PATCHES = GRID_SIZE * GRID_SIZE  # 196
UNSEEN = NUM_PATCHES  # class index of "no buddy" (196)


def patch_centres(device=None, dtype=torch.float32) -> torch.Tensor:
    """Centres (u, v) of the 196 patches in crop pixels, flat index j = 14 iy + ix. [196, 2]."""
    i = torch.arange(GRID_SIZE, device=device, dtype=dtype) * PATCH_SIZE + (PATCH_SIZE - 1) / 2
    iy, ix = torch.meshgrid(i, i, indexing="ij")
    return torch.stack([ix.reshape(-1), iy.reshape(-1)], dim=-1)


def patch_anchors(device=None, dtype=torch.float32) -> torch.Tensor:
    """Anchor pixels (u, v) = (16 ix + 8, 16 iy + 8) of the 196 patches. [196, 2]."""
    return patch_centres(device, dtype) + 0.5


def project(points: torch.Tensor, K: torch.Tensor, z_min: float = 0.0) -> torch.Tensor:
    """Pinhole projection of camera-frame points. points [..., 3], K [..., 3, 3] -> uv [..., 2].

    z is clamped below at `z_min` when `z_min > 0` (EPro-PnP's convention for points behind the camera).
    """
    z = points[..., 2:3]
    if z_min > 0:
        z = z.clamp(min=z_min)
    xy = points[..., :2] / z
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    skew = K[..., 0, 1, None]
    u = fx * xy[..., 0] + skew * xy[..., 1] + cx
    v = fy * xy[..., 1] + cy
    return torch.stack([u, v], dim=-1)


def backproject(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Camera-frame point at pixel `uv` [..., 2] with depth (z, metres) `depth` [...]. K [..., 3, 3] -> [..., 3]."""
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    skew = K[..., 0, 1, None]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - skew * y) / fx
    return torch.stack([x * depth, y * depth, depth], dim=-1)


def transform_points(T: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply 4x4 transforms T [..., 4, 4] to points [..., N, 3] -> [..., N, 3]."""
    R, t = T[..., :3, :3], T[..., :3, 3]
    return points @ R.transpose(-1, -2) + t.unsqueeze(-2)


def invert_pose(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms T [..., 4, 4] (uses R^T, not a general inverse)."""
    R, t = T[..., :3, :3], T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    out = torch.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1
    return out


def viewing_direction(T_m2c: torch.Tensor) -> torch.Tensor:
    """Unit vector from the object origin to the camera, model frame. T_m2c [..., 4, 4] -> [..., 3]."""
    R, t = T_m2c[..., :3, :3], T_m2c[..., :3, 3]
    c = -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)
    return c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def rigid_error(T: torch.Tensor) -> torch.Tensor:
    """How far T [..., 4, 4] is from a rigid transform: max of |R^T R - I|, |det R - 1|, |last row - e4|. -> [...]."""
    R = T[..., :3, :3].to(torch.float64)
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    orth = (R.transpose(-1, -2) @ R - eye).abs().amax(dim=(-1, -2))
    det = (torch.linalg.det(R) - 1).abs()
    bottom = T[..., 3, :].to(torch.float64) - torch.tensor([0, 0, 0, 1.0], dtype=R.dtype, device=R.device)
    return torch.maximum(torch.maximum(orth, det), bottom.abs().amax(dim=-1))


def check_rigid(name: str, T: torch.Tensor, atol: float = 1e-3) -> None:
    """Raise ValueError naming `name` if any of the 4x4 transforms in T is not rigid (or not finite)."""
    if not torch.isfinite(T).all():
        raise ValueError(f"{name} contains NaN or inf")
    err = rigid_error(T)
    if (err > atol).any():
        bad = int((err > atol).sum())
        raise ValueError(
            f"{name} must hold rigid transforms [[R, t], [0, 1]] with R a rotation; "
            f"{bad} of {err.numel()} are not (worst deviation {float(err.max()):.3g} > {atol})"
        )


# --------------------------------------------------------------------------------------------
# Rotations


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (w, x, y, z) [..., 4] -> rotation matrices [..., 3, 3] (q is normalised first)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions (w, x, y, z) [..., 4] with w >= 0."""
    m = R
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    # Four candidate solutions; take the numerically best per element (largest denominator).
    cands = torch.stack(
        [
            torch.stack([1 + trace, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                         m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                         m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                         1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                         m[..., 1, 2] + m[..., 2, 1], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
        ],
        dim=-2,
    )  # [..., 4, 4]
    diag = torch.stack(
        [trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], dim=-1
    )  # 4 q_i^2 - 1 up to the same offset: pick the largest
    best = diag.argmax(dim=-1, keepdim=True)
    q = torch.gather(cands, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.where(q[..., :1] < 0, -q, q)


def pose_vector_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """[tx, ty, tz, qw, qx, qy, qz] [..., 7] -> T_m2c [..., 4, 4]."""
    T = torch.zeros(pose.shape[:-1] + (4, 4), dtype=pose.dtype, device=pose.device)
    T[..., :3, :3] = quaternion_to_matrix(pose[..., 3:])
    T[..., :3, 3] = pose[..., :3]
    T[..., 3, 3] = 1
    return T


def matrix_to_pose_vector(T: torch.Tensor) -> torch.Tensor:
    """T_m2c [..., 4, 4] -> [tx, ty, tz, qw, qx, qy, qz] [..., 7]."""
    return torch.cat([T[..., :3, 3], matrix_to_quaternion(T[..., :3, :3])], dim=-1)


def rotation_angle_deg(R_a: torch.Tensor, R_b: torch.Tensor) -> torch.Tensor:
    """Geodesic angle between rotations [..., 3, 3], in degrees."""
    rel = R_a.transpose(-1, -2) @ R_b
    cos = ((rel[..., 0, 0] + rel[..., 1, 1] + rel[..., 2, 2]) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def look_at_pose(direction: torch.Tensor, distance: float | torch.Tensor, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """T_m2c of a camera at `distance` along unit `direction` [..., 3] (model frame) looking at the origin.

    The camera's y axis (image down) is aligned with -up projected on the image plane; when the
    direction is parallel to `up`, the model x axis is used instead.
    """
    d = direction / direction.norm(dim=-1, keepdim=True)
    z = -d  # camera z looks at the origin
    up_t = torch.tensor(up, dtype=d.dtype, device=d.device).expand_as(d)
    alt = torch.tensor((1.0, 0.0, 0.0), dtype=d.dtype, device=d.device).expand_as(d)
    parallel = (torch.cross(z, up_t, dim=-1).norm(dim=-1, keepdim=True) < 1e-6)
    up_t = torch.where(parallel, alt, up_t)
    x = torch.cross(z, up_t, dim=-1)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.cross(z, x, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows: camera axes in model coordinates
    T = torch.zeros(d.shape[:-1] + (4, 4), dtype=d.dtype, device=d.device)
    T[..., :3, :3] = R
    dist = torch.as_tensor(distance, dtype=d.dtype, device=d.device)
    T[..., :3, 3] = (-(R @ (d * dist[..., None] if dist.dim() else d * dist).unsqueeze(-1))).squeeze(-1)
    T[..., 3, 3] = 1
    return T


def deg2rad(x: float) -> float:
    return x * math.pi / 180.0
