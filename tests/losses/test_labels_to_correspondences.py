"""End to end with the label op: ground-truth flow labels (docs/conventions.md §4) turned into correspondences reproject
exactly at the query's ground-truth pose, and the model's flow prior matches the labels of an unmoved view."""

from __future__ import annotations

import pytest
import torch

from vpog.geometry import look_at_pose, project, transform_points
from vpog.losses import sample_correspondences


def _scene():
    """A fronto-parallel plane at 0.5 m filling the image; template 0 = the query's view, template 1 the
    camera moved 8 px sideways (so every buddy is the same patch or its right neighbour)."""
    K = torch.tensor([[320.0, 0.0, 111.5], [0.0, 320.0, 111.5], [0.0, 0.0, 1.0]])
    q_pose = look_at_pose(torch.tensor([[0.0, 0.0, 1.0]]), 0.5)[0]
    moved = q_pose.clone()
    moved[0, 3] -= 8 * 0.5 / 320.0  # the scene moves 8 px left in the template image
    depth = torch.full((224, 224), 0.5)
    mask = torch.ones(224, 224, dtype=torch.bool)
    return dict(
        q_depth=depth[None], q_mask=mask[None], q_K=K[None], q_pose=q_pose[None],
        t_depth=depth.expand(1, 2, 224, 224).clone(), t_mask=mask.expand(1, 2, 224, 224).clone(),
        t_K=K.expand(1, 2, 3, 3).clone(), t_pose=torch.stack([q_pose, moved])[None], tau=0.01,
    )


def test_label_flow_gives_exact_correspondences():
    ops = pytest.importorskip("vpog.ops.patch_flow_labels")
    sc = _scene()
    labels = ops.patch_flow_labels(**sc, backend="reference")
    cls = labels.patch_cls.reshape(1, 2, 196)
    valid_pair = (cls >= 0) & (cls < 196)
    assert valid_pair[0, 0].all()
    torch.testing.assert_close(cls[0, 0], torch.arange(196))  # the same view: every patch is its own buddy
    flow = labels.dense_flow.reshape(1, 2, 196, 16, 16, 2)
    # same view: the labels equal the flow head's initial prior ((u - 7.5) / 16, (v - 7.5) / 16)
    offs = (torch.arange(16.0) - 7.5) / 16
    torch.testing.assert_close(flow[0, 0, ..., 0], offs.expand(196, 16, 16), atol=1e-4, rtol=0)
    torch.testing.assert_close(flow[0, 0, ..., 1], offs[:, None].expand(196, 16, 16), atol=1e-4, rtol=0)
    # draw only visible pixels: usable = visible (b encodes nothing here, the depth masks the rest)
    vis = labels.dense_visible.reshape(1, 2, 196, 16, 16)
    t_depth_vis = torch.zeros(1, 2, 224, 224)
    for s in range(2):
        for i in torch.nonzero(valid_pair[0, s]).flatten().tolist():
            j = int(cls[0, s, i])
            blk = t_depth_vis[0, s, 16 * (j // 14):16 * (j // 14) + 16, 16 * (j % 14):16 * (j % 14) + 16]
            blk[vis[0, s, i]] = 0.5
    c = sample_correspondences(flow, torch.ones(1, 2, 196, 16, 16), torch.tensor(1.0), cls.clamp(0, 195),
                               valid_pair, t_depth_vis, sc["t_K"], sc["t_pose"], num_points=300,
                               generator=torch.Generator().manual_seed(0))
    assert c.valid.all()
    uv = project(transform_points(sc["q_pose"], c.x3d), sc["q_K"])
    torch.testing.assert_close(uv, c.x2d, atol=1e-2, rtol=0)
