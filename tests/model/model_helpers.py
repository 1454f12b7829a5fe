"""Shared pieces of the model tests: the tiny config (as vpog_tiny.yaml) and a synthetic batch.

A module of its own (not conftest) so `from model_helpers import ...` is unambiguous whatever else
pytest collects.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from vpog.geometry import look_at_pose, pose_vector_to_matrix, project, transform_points
from vpog.losses import PoseTargets
from vpog.model import VPOGConfig


def tiny_config(**encoder) -> VPOGConfig:
    """The model of `vpog/config/model/vpog_tiny.yaml`."""
    enc = dict(embed_dim=192, depth=2, num_heads=3)
    enc.update(encoder)
    return VPOGConfig(
        name="vpog_tiny",
        encoder=enc,
        group_attention=dict(depth=1, num_heads=3),
        heads=dict(proj_dim=64, flow_hidden_dim=128),
    )


def make_batch(B: int = 1, S: int = 2, seed: int = 0):
    """Random images, template geometry around a query direction, docs/conventions.md §4-shaped labels, pose targets."""
    g = torch.Generator().manual_seed(seed)
    d_q = torch.nn.functional.normalize(torch.randn(B, 3, generator=g), dim=-1)
    dirs = torch.nn.functional.normalize(d_q[:, None] + 0.3 * torch.randn(B, S, 3, generator=g), dim=-1)
    t_pose = look_at_pose(dirs, 0.5)
    q_pose = look_at_pose(d_q, 0.6)
    K = torch.tensor([[300.0, 0.0, 111.5], [0.0, 300.0, 111.5], [0.0, 0.0, 1.0]])
    cls = torch.randint(-1, 197, (B, S, 14, 14), generator=g)
    buddy = ((cls >= 0) & (cls < 196))[..., None, None]
    visible = (torch.rand(B, S, 14, 14, 16, 16, generator=g) < 0.7) & buddy
    flow = (torch.rand(B, S, 14, 14, 16, 16, 2, generator=g) - 0.5) * visible[..., None]
    return SimpleNamespace(
        T_m2c=torch.cat([q_pose[:, None], t_pose], dim=1),
        query_images=torch.rand(B, 3, 224, 224, generator=g),
        template_images=torch.rand(B, S, 3, 224, 224, generator=g),
        template_dirs=dirs,
        d_ref=dirs[:, 0].clone(),
        ref_R=t_pose[:, 0, :3, :3].clone(),
        labels=SimpleNamespace(patch_cls=cls, dense_flow=flow, dense_visible=visible),
        pose=PoseTargets(
            t_depth=0.45 + 0.1 * torch.rand(B, S, 224, 224, generator=g),
            t_K=K.expand(B, S, 3, 3).clone(),
            t_pose=t_pose,
            q_K=K.expand(B, 3, 3).clone(),
            q_pose=q_pose,
        ),
    )


def reprojection_pose_loss(x3d, x2d, w2d, K, pose_gt):
    """A stand-in `PoseLoss`: weighted reprojection error at the ground-truth pose (differentiable in x2d, w2d)."""
    uv = project(transform_points(pose_vector_to_matrix(pose_gt), x3d), K)
    return (w2d * (uv - x2d).abs() / 100.0).mean() + 1e-2 * w2d.mean()


def model_inputs(batch, with_buddies: bool = True) -> dict:
    out = dict(query_images=batch.query_images, template_images=batch.template_images,
               template_dirs=batch.template_dirs, d_ref=batch.d_ref, ref_R=batch.ref_R)
    if with_buddies:
        out["buddies"] = batch.labels.patch_cls
    return out
