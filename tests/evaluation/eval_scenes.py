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


def render_ellipsoid(K: torch.Tensor, T_m2c: torch.Tensor, size: int | tuple[int, int] = CROP_SIZE,
                     axes=AXES, centre=CENTRE, with_rgb: bool = False):
    """Depth [H, W] float32 (metres, 0 = background) and mask [H, W] bool of an ellipsoid (and, with
    `with_rgb`, an RGB uint8 [H, W, 3] image of a colour pattern fixed to the model frame).

    size: W = H = size, or (W, H).
    """
    W, H = (size, size) if isinstance(size, int) else size
    K, T = K.double(), T_m2c.double()
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                          indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1)  # z = 1
    R, t = T[:3, :3], T[:3, 3]
    cam = -R.T @ t  # camera centre, model frame
    origin = cam - torch.tensor(centre, dtype=torch.float64)  # ellipsoid frame
    dirs = rays @ R  # R^T ray, in the model frame
    a = torch.tensor(axes, dtype=torch.float64)
    o, d = origin / a, dirs / a
    qa = (d * d).sum(-1)
    qb = 2 * (d * o).sum(-1)
    qc = (o * o).sum() - 1
    disc = qb * qb - 4 * qa * qc
    hit = disc > 0
    s = (-qb - disc.clamp(min=0).sqrt()) / (2 * qa)  # nearest intersection; depth = s (ray z = 1)
    hit = hit & (s > 0)
    depth = torch.where(hit, s, 0.0).float()
    if not with_rgb:
        return depth, hit
    p = cam + s[..., None] * dirs  # model-frame surface point
    freq = torch.tensor([45.0, 60.0, 75.0], dtype=torch.float64)
    phase = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    col = 0.5 + 0.45 * torch.sin(p * freq + phase + 20 * p.roll(1, dims=-1))
    rgb = torch.where(hit[..., None], col * 255, 0.0).round().clamp(0, 255).to(torch.uint8)
    return depth, hit, rgb


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


# --------------------------------------------------------------------------------------------
# A tiny BOP-webdataset set on disk (no renderer): ellipsoid objects, 8 template views each


TINY_OBJECTS = {1: (0.06, 0.04, 0.025), 2: (0.05, 0.035, 0.03), 3: (0.045, 0.03, 0.02)}


def view_dirs() -> torch.Tensor:
    """8 template viewing directions: the cube's corners (every view has one at >= 90 degrees)."""
    v = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    return v / v.norm(dim=-1, keepdim=True)


MICRO_MODEL = {"name": "vpog_micro", "encoder": {"embed_dim": 64, "depth": 1, "num_heads": 1},
               "group_attention": {"depth": 1, "num_heads": 1}, "heads": {"proj_dim": 32, "flow_hidden_dim": 64}}


def micro_model(seed: int = 0):
    """A 0.3 M-parameter VPOG (width 64, one block each) for fast CPU tests."""
    from vpog.model import VPOG, vpog_config_from_dict

    torch.manual_seed(seed)
    return VPOG(vpog_config_from_dict(MICRO_MODEL)).eval()


def write_tiny_dataset(root, name: str = "tiny", images_per_object: int = 2, symmetric_object: int | None = 3):
    """A BOP-webdataset root with TINY_OBJECTS: one instance per image, templates at 8 views.

    Returns the root. The `symmetric_object` is declared with BOP's 180-degree symmetries about its
    z axis (its colour pattern is not symmetric: this exercises the ADD-S / symmetric metric paths).
    """
    from pathlib import Path

    import numpy as np

    from vpog.data.bop_writer import (
        ImageRecord,
        InstanceRecord,
        encode_image,
        models_info_entry,
        write_key_to_shard,
        write_model_ply,
        write_models_info,
        write_shard,
    )
    from vpog.data.templates import pose_path, save_view, template_dir, write_camera

    root = Path(root)
    tw, th = 160, 120
    tK = intrinsics(150.0, (tw - 1) / 2, (th - 1) / 2)
    write_camera(root / "templates", name, tK.double().numpy(), tw, th)
    iw, ih = 320, 240
    iK = intrinsics(300.0, (iw - 1) / 2, (ih - 1) / 2)
    infos, samples = {}, []
    gen = torch.Generator().manual_seed(0)
    index = 0
    for obj, axes in TINY_OBJECTS.items():
        diameter = 2 * max(axes)
        # model: ellipsoid surface samples (vertices only)
        dirs = torch.randn(500, 3, generator=gen, dtype=torch.float64)
        verts = dirs / dirs.norm(dim=-1, keepdim=True) * torch.tensor(axes, dtype=torch.float64)
        verts = verts + torch.tensor(CENTRE, dtype=torch.float64)
        write_model_ply(root / "models" / f"obj_{obj:06d}.ply", verts.numpy(), np.zeros((0, 3), np.int32),
                        np.full((len(verts), 3), 128, np.uint8))
        sym = None
        if obj == symmetric_object:
            sym = {"symmetries_discrete": [[-1, 0, 0, 2 * CENTRE[0] * 1000, 0, -1, 0, 2 * CENTRE[1] * 1000,
                                            0, 0, 1, 0, 0, 0, 0, 1]]}
        infos[obj] = models_info_entry(verts.numpy(), diameter, sym)
        # templates: 8 views at 0.45 m
        poses = look_at_pose(view_dirs(), 0.45)
        folder = template_dir(root / "templates", name, obj)
        folder.mkdir(parents=True, exist_ok=True)
        for v, T in enumerate(poses):
            depth, _, rgb = render_ellipsoid(tK, T, (tw, th), axes, CENTRE, with_rgb=True)
            save_view(folder, v, rgb.numpy(), depth.numpy())
        poses_mm = poses.double().clone()
        poses_mm[:, :3, 3] *= 1000
        pp = pose_path(root / "templates", name, obj)
        pp.parent.mkdir(parents=True, exist_ok=True)
        np.save(pp, poses_mm.numpy())
        # scenes: one instance each, random view and roll, off-centre
        for _ in range(images_per_object):
            d = torch.randn(3, generator=gen)
            roll = float(torch.rand(1, generator=gen)) * 360
            shift = ((torch.rand(2, generator=gen) - 0.5) * 0.1).tolist()
            T = view_pose((d / d.norm()).tolist(), 0.6, roll_deg=roll, shift=shift)
            depth, mask, rgb = render_ellipsoid(iK, T, (iw, ih), axes, CENTRE, with_rgb=True)
            m = mask.numpy()
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            inst = InstanceRecord(obj, T.double().numpy(), m, m, bbox)
            key = f"000000_{index:06d}"
            samples.append((key, encode_image(ImageRecord(key, rgb.numpy(), depth.numpy(), iK.double().numpy(),
                                                          [inst]))))
            index += 1
    write_shard(root / "train_pbr_web" / "shard-000000.tar", samples)
    write_key_to_shard(root, {k: 0 for k, _ in samples})
    write_models_info(root, infos)
    return root
