"""Scenes and comparisons shared by the patch_flow_labels tests and benchmark.

Scenes are ray-cast in closed form (unions of spheres seen by pinhole cameras, with optional
occluders; fronto-parallel planes), so depths and masks of query and templates are consistent, as
rendered data are. Needs torch only (runs on the GPU machine).
"""

from __future__ import annotations

import math

import torch

from vpog.geometry import invert_pose, look_at_pose
from vpog.ops import FlowLabels
from vpog.ops.patch_flow_labels import _reference_impl

P = 16


# --------------------------------------------------------------------------------------------
# Scenes


def render_spheres(centres, radii, K, T, H, W):
    """Depth [N, H, W] (0 = empty) and index of the hit sphere [N, H, W] (-1 = none).

    centres [N, M, 3] model frame, radii [N, M], K [N, 3, 3], T [N, 4, 4] (T_m2c).
    """
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                          indexing="ij")
    K, T, centres, radii = K.double(), T.double(), centres.double(), radii.double()
    fx, fy, cx, cy, sk = (K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 0, 1])
    y = (v[None] - cy[:, None, None]) / fy[:, None, None]
    x = (u[None] - cx[:, None, None] - sk[:, None, None] * y) / fx[:, None, None]
    d = torch.stack([x, y, torch.ones_like(x)], dim=-1).reshape(len(K), H * W, 3)  # z = 1 rays
    C = centres @ T[:, :3, :3].transpose(1, 2) + T[:, None, :3, 3]  # [N, M, 3] camera frame
    dc = d @ C.transpose(1, 2)  # [N, HW, M]
    dd = (d * d).sum(-1, keepdim=True)
    disc = dc * dc - dd * ((C * C).sum(-1) - radii * radii)[:, None]
    t = (dc - disc.clamp_min(0).sqrt()) / dd
    t = torch.where((disc >= 0) & (t > 0), t, torch.inf)
    z, idx = t.min(dim=-1)
    hit = torch.isfinite(z)
    depth = torch.where(hit, z, 0.0).reshape(-1, H, W).float()
    return depth, torch.where(hit, idx, -1).reshape(-1, H, W)


def make_K(n, f, cx, cy, gen=None, skew=0.0):
    K = torch.zeros(n, 3, 3)
    K[:, 0, 0] = f
    K[:, 1, 1] = f * (1 + (0.02 * torch.rand(n, generator=gen) if gen is not None else 0.0))
    K[:, 0, 2] = cx
    K[:, 1, 2] = cy
    K[:, 0, 1] = skew
    K[:, 2, 2] = 1
    return K


def rot_z(angle):
    """Rotation about the camera's optical axis, 4x4. angle [...] radians -> [..., 4, 4]."""
    c, s = torch.cos(angle), torch.sin(angle)
    R = torch.zeros(angle.shape + (4, 4))
    R[..., 0, 0], R[..., 0, 1], R[..., 1, 0], R[..., 1, 1] = c, -s, s, c
    R[..., 2, 2] = R[..., 3, 3] = 1
    return R


def random_scene(B, S, H=224, W=224, seed=0, occluders=True):
    """B objects (unions of 5 spheres, ~0.2 m), a query and S templates each, as a training batch.

    Templates: half near the query's viewing direction (< 25 degrees), the rest anywhere.
    Query: random in-plane rotation, off-centre, scale different from the templates', and (with
    `occluders`) a foreign sphere in front of part of the object (query depth includes it, the
    query mask is the visible mask).
    """
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(B, 5, 3, generator=g) - 0.5) * 0.14
    radii = 0.04 + 0.03 * torch.rand(B, 5, generator=g)
    d_q = torch.nn.functional.normalize(torch.randn(B, 3, generator=g), dim=-1)
    dist_q = 0.5 + 0.3 * torch.rand(B, generator=g)
    T_q = rot_z(2 * math.pi * torch.rand(B, generator=g)) @ look_at_pose(d_q, dist_q)
    T_q[:, :2, 3] += (torch.rand(B, 2, generator=g) - 0.5) * 0.06
    scale = min(H, W) / 224
    K_q = make_K(B, 600 * scale * (1 + 0.3 * torch.rand(B, generator=g)), W / 2 - 0.5, H / 2 - 0.5, g)
    near = torch.nn.functional.normalize(d_q[:, None] + 0.4 * torch.randn(B, S, 3, generator=g), dim=-1)
    far = torch.nn.functional.normalize(torch.randn(B, S, 3, generator=g), dim=-1)
    d_t = torch.where((torch.arange(S) < (S + 1) // 2)[None, :, None], near, far)
    T_t = look_at_pose(d_t, torch.full((B, S), 0.6))
    K_t = make_K(B * S, 650 * scale, W / 2 - 0.5, H / 2 - 0.5, g).reshape(B, S, 3, 3)

    q_depth, q_hit = render_spheres(centres, radii, K_q, T_q, H, W)
    q_mask = q_hit >= 0
    if occluders:  # a sphere 0.15 m in front of the object, off-axis, in the query camera frame
        occ_c = torch.cat([(torch.rand(B, 2, generator=g) - 0.5) * 0.1, (dist_q - 0.15)[:, None]], dim=1)
        occ_T = torch.eye(4).expand(B, 4, 4)
        occ_d, occ_hit = render_spheres(occ_c[:, None], torch.full((B, 1), 0.025), K_q, occ_T, H, W)
        front = (occ_hit >= 0) & ((occ_d < q_depth) | ~q_mask)
        q_depth = torch.where(front, occ_d, q_depth)
        q_mask = q_mask & ~front
    t_depth, t_hit = render_spheres(centres.repeat_interleave(S, 0), radii.repeat_interleave(S, 0),
                                    K_t.reshape(-1, 3, 3), T_t.reshape(-1, 4, 4), H, W)
    tau = 0.02 * 0.2 * torch.ones(B)
    return dict(q_depth=q_depth, q_mask=q_mask, q_K=K_q, q_pose=T_q,
                t_depth=t_depth.reshape(B, S, H, W), t_mask=(t_hit >= 0).reshape(B, S, H, W),
                t_K=K_t, t_pose=T_t, tau=tau)


def to(scene, device):
    return {k: v.to(device) for k, v in scene.items()}


# --------------------------------------------------------------------------------------------
# Comparison with the reference, allowing only decision-boundary differences


def near_tie(uv, eps=1e-3):
    """True where a coordinate of uv [..., 2] is within eps px of a rounding tie (x.5)."""
    frac = torch.remainder(uv + 0.5, 1.0)
    return ((frac < eps) | (frac > 1 - eps)).any(-1)


def assert_matches_reference(out: FlowLabels, scene, flow_atol=1e-4):
    """out equals the reference except at decision boundaries; returns the number of such cases."""
    ref, inter = _reference_impl(**to(scene, out.patch_cls.device))
    B, S, GH, GW = ref.patch_cls.shape
    NP = GH * GW
    ref_cls, out_cls = ref.patch_cls.reshape(B, S, NP), out.patch_cls.reshape(B, S, NP)
    boundary = near_tie(inter.anchor_uv) | (inter.anchor_res.abs() < 1e-5)
    cls_diff = ref_cls != out_cls
    assert not (cls_diff & ~boundary).any(), (
        f"patch_cls differs away from decision boundaries at {int((cls_diff & ~boundary).sum())} pairs"
    )
    assert out.patch_cls.dtype == torch.int64 and out.dense_visible.dtype == torch.bool
    same = (~cls_diff)[..., None]
    torch.testing.assert_close(out.coarse_flow.reshape(B, S, NP, 2) * same,
                               ref.coarse_flow.reshape(B, S, NP, 2) * same, atol=0, rtol=0)
    pix_boundary = near_tie(inter.pixel_uv) | (inter.pixel_res.abs() < 1e-5)
    ref_vis = ref.dense_visible.reshape(B, S, NP, P * P)
    out_vis = out.dense_visible.reshape(B, S, NP, P * P)
    vis_diff = (ref_vis != out_vis) & same
    assert not (vis_diff & ~pix_boundary).any(), (
        f"dense_visible differs away from boundaries at {int((vis_diff & ~pix_boundary).sum())} pixels"
    )
    both = (ref_vis & out_vis)[..., None]
    ref_flow = ref.dense_flow.reshape(B, S, NP, P * P, 2)
    out_flow = out.dense_flow.reshape(B, S, NP, P * P, 2)
    torch.testing.assert_close(out_flow * both, ref_flow * both, atol=flow_atol, rtol=0)
    # invisible pixels carry zero flow in both
    assert (out_flow[~out_vis] == 0).all()
    return int(cls_diff.sum()) + int(vis_diff.sum())


def plane_scene(H, W, q_K, t_K, q_pose, t_pose, depth=0.5, bounded=True):
    """Fronto-parallel plane at `depth` in the query camera, seen by templates at t_pose.

    bounded: the plane is exactly what the query image sees (template mask = its footprint);
    else it is infinite (template mask = everything in front of the template camera).
    """
    B, S = t_K.shape[:2]
    q_depth = torch.full((B, H, W), depth)
    q_mask = torch.ones(B, H, W, dtype=torch.bool)
    # plane z = depth in the query camera: n . X_q = depth with n = e_z; template depth by ray-plane
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                          indexing="ij")
    T = (q_pose[:, None].double() @ invert_pose(t_pose.double()))  # template camera -> query camera
    Kd = t_K.double()
    y = (v - Kd[..., 1, 2, None, None]) / Kd[..., 1, 1, None, None]
    x = (u - Kd[..., 0, 2, None, None] - Kd[..., 0, 1, None, None] * y) / Kd[..., 0, 0, None, None]
    ray_q = (T[..., 2, 0, None, None] * x + T[..., 2, 1, None, None] * y + T[..., 2, 2, None, None])
    zt = (depth - T[..., 2, 3, None, None]) / ray_q  # template z where the ray meets the plane
    Xq = [T[..., k, 0, None, None] * x * zt + T[..., k, 1, None, None] * y * zt
          + T[..., k, 2, None, None] * zt + T[..., k, 3, None, None] for k in range(3)]
    uq = q_K[:, None, 0, 0, None, None] * Xq[0] / Xq[2] + q_K[:, None, 0, 2, None, None]
    vq = q_K[:, None, 1, 1, None, None] * Xq[1] / Xq[2] + q_K[:, None, 1, 2, None, None]
    t_mask = zt > 0
    if bounded:
        t_mask &= (uq >= -0.5) & (uq < W - 0.5) & (vq >= -0.5) & (vq < H - 0.5)
    t_depth = torch.where(t_mask, zt, 0.0).float()
    return dict(q_depth=q_depth, q_mask=q_mask, q_K=q_K, q_pose=q_pose, t_depth=t_depth, t_mask=t_mask,
                t_K=t_K, t_pose=t_pose, tau=torch.full((B,), 0.004))
