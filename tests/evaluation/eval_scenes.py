"""Analytic test scenes: an off-centre ellipsoid ray-cast into 224x224 depth and mask crops.

No renderer and no data files: depth is the exact ray-ellipsoid intersection, so ground-truth flow
labels, correspondences and poses are exact up to float32 rounding.
"""

from __future__ import annotations

import math

import torch

from vpog.geometry import CROP_SIZE, look_at_pose

AXES = (0.06, 0.04, 0.025)  # semi-axes, metres
CENTRE = (0.01, -0.005, 0.0)  # ellipsoid centre in the model frame, metres
DIAMETER = 2 * max(AXES)


def intrinsics(f: float, cx: float = CROP_SIZE / 2, cy: float = CROP_SIZE / 2) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def render_ellipsoid(K: torch.Tensor, T_m2c: torch.Tensor, size: int = CROP_SIZE):
    """Depth [size, size] float32 (metres, 0 = background) and mask [size, size] bool of the ellipsoid."""
    K, T = K.double(), T_m2c.double()
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)  # z = 1
    R, t = T[:3, :3], T[:3, 3]
    origin = -R.T @ t - torch.tensor(CENTRE, dtype=torch.float64)  # camera centre, ellipsoid frame
    dirs = rays @ R  # R^T ray, in the model frame
    a = torch.tensor(AXES, dtype=torch.float64)
    o, d = origin / a, dirs / a
    qa = (d * d).sum(-1)
    qb = 2 * (d * o).sum(-1)
    qc = (o * o).sum() - 1
    disc = qb * qb - 4 * qa * qc
    hit = disc > 0
    s = (-qb - disc.clamp(min=0).sqrt()) / (2 * qa)  # nearest intersection; depth = s (ray z = 1)
    hit = hit & (s > 0)
    depth = torch.where(hit, s, 0.0).float()
    return depth, hit


def view_pose(direction, distance: float, roll_deg: float = 0.0, shift=(0.0, 0.0)) -> torch.Tensor:
    """T_m2c looking at the model origin from `direction`, rolled about the optical axis, shifted in x, y."""
    T = look_at_pose(torch.tensor(direction, dtype=torch.float32), distance)
    c, s = math.cos(math.radians(roll_deg)), math.sin(math.radians(roll_deg))
    roll = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    T[:3, :3] = roll @ T[:3, :3]
    T[:3, 3] = roll @ T[:3, 3] + torch.tensor([shift[0], shift[1], 0.0])
    return T


def rotate_direction(direction, axis, deg: float) -> list[float]:
    """`direction` rotated by `deg` about `axis` (Rodrigues), as a list."""
    d = torch.tensor(direction, dtype=torch.float64)
    k = torch.tensor(axis, dtype=torch.float64)
    k = k / k.norm()
    a = math.radians(deg)
    out = d * math.cos(a) + torch.cross(k, d, dim=0) * math.sin(a) + k * (k @ d) * (1 - math.cos(a))
    return out.tolist()


def query_and_templates(template_offsets_deg=(8.0, 18.0), roll_deg: float = 25.0):
    """One query and S templates of the ellipsoid (batch of 1), as `patch_flow_labels` wants them."""
    d_q = [0.3, -0.5, 0.8]
    T_q = view_pose(d_q, 0.6, roll_deg=roll_deg, shift=(0.012, -0.008))
    K_q = intrinsics(900.0, 117.0, 109.0)
    q_depth, q_mask = render_ellipsoid(K_q, T_q)
    t_pose, t_K, t_depth, t_mask = [], [], [], []
    for k, off in enumerate(template_offsets_deg):
        d_t = rotate_direction(d_q, [1.0, 0.3 * k, 0.2], off)
        T_t = view_pose(d_t, 0.5)
        K_t = intrinsics(700.0)
        dep, msk = render_ellipsoid(K_t, T_t)
        t_pose.append(T_t)
        t_K.append(K_t)
        t_depth.append(dep)
        t_mask.append(msk)
    return {
        "q_depth": q_depth[None], "q_mask": q_mask[None], "q_K": K_q[None], "q_pose": T_q[None],
        "t_depth": torch.stack(t_depth)[None], "t_mask": torch.stack(t_mask)[None],
        "t_K": torch.stack(t_K)[None], "t_pose": torch.stack(t_pose)[None],
    }
