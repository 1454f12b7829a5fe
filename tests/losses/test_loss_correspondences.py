"""2D-3D correspondences drawn from the flow head's output (docs/conventions.md §4, §6)."""

from __future__ import annotations

import pytest
import torch

from vpog.geometry import backproject, invert_pose, look_at_pose, project, transform_points
from vpog.losses import sample_correspondences

K = torch.tensor([[280.0, 0.0, 111.5], [0.0, 290.0, 112.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _scene(S=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_q = torch.nn.functional.normalize(torch.randn(1, 3, generator=g, dtype=torch.float64), dim=-1)
    dirs = torch.nn.functional.normalize(d_q[:, None] + 0.3 * torch.randn(1, S, 3, generator=g,
                                                                        dtype=torch.float64), dim=-1)
    t_pose, q_pose = look_at_pose(dirs, 0.5), look_at_pose(d_q, 0.6)
    depth = 0.45 + 0.1 * torch.rand(1, S, 224, 224, generator=g, dtype=torch.float64)
    depth[:, :, :, :40] = 0  # no depth on the left columns
    buddies = torch.randint(0, 196, (1, S, 196), generator=g)
    valid_pair = torch.rand(1, S, 196, generator=g) < 0.7
    # the true flow of every pixel of every (query patch, buddy) pair: where it lands in the query
    v, u = torch.meshgrid(torch.arange(224.0, dtype=torch.float64), torch.arange(224.0, dtype=torch.float64),
                          indexing="ij")
    uv = torch.stack([u, v], -1).reshape(1, -1, 2)
    land = []
    for s in range(S):
        x_cam = backproject(uv, depth[:, s].reshape(1, -1), K[None])
        x_model = transform_points(invert_pose(t_pose[:, s]), x_cam)
        land.append(project(transform_points(q_pose, x_model), K[None]).reshape(224, 224, 2))
    flow = torch.zeros(1, S, 196, 16, 16, 2, dtype=torch.float64)
    for s in range(S):
        for i in range(196):
            j = int(buddies[0, s, i])
            jy, jx, iy, ix = j // 14, j % 14, i // 14, i % 14
            centre = torch.tensor([16 * ix + 7.5, 16 * iy + 7.5], dtype=torch.float64)
            flow[0, s, i] = (land[s][16 * jy:16 * jy + 16, 16 * jx:16 * jx + 16] - centre) / 16
    # b encodes the flat pixel index, so w2d tells which pixel was drawn
    b = 0.1 + 1e-7 * torch.arange(S * 196 * 256, dtype=torch.float64).reshape(1, S, 196, 16, 16)
    return dict(flow=flow.float(), b=b, buddies=buddies, valid_pair=valid_pair, t_depth=depth.float(),
                t_K=K.float().expand(1, S, 3, 3), t_pose=t_pose.float()), q_pose


def test_correspondences_reproject_onto_x2d():
    args, q_pose = _scene()
    scale = torch.tensor(2.0)
    c = sample_correspondences(weight_scale=scale, num_points=400, generator=torch.Generator().manual_seed(0),
                               **args)
    assert c.x3d.shape == (1, 400, 3) and c.x2d.shape == (1, 400, 2) and c.w2d.shape == (1, 400, 2)
    assert c.valid.all()
    uv = project(transform_points(q_pose.float(), c.x3d), K.float()[None])
    torch.testing.assert_close(uv, c.x2d, atol=2e-3, rtol=0)
    # the drawn pixels are usable: a buddy pair, template depth > 0 (columns >= 40)
    idx = torch.round((scale / c.w2d[0, :, 0] - 0.1) / 1e-7).long()
    s, i = idx // (196 * 256), (idx // 256) % 196
    u = idx % 16
    assert args["valid_pair"][0, s, i].all()
    j = args["buddies"][0, s, i]
    assert ((j % 14) * 16 + u >= 40).all()
    torch.testing.assert_close(c.w2d[..., 0], c.w2d[..., 1])


def test_sample_without_usable_pixels_is_harmless():
    args, _ = _scene()
    args["valid_pair"] = torch.zeros_like(args["valid_pair"])
    c = sample_correspondences(weight_scale=torch.tensor(1.0), num_points=16, **args)
    assert not c.valid.any()
    assert (c.w2d == 0).all() and torch.isfinite(c.x3d).all() and torch.isfinite(c.x2d).all()


def test_template_mask_limits_the_draws():
    args, _ = _scene()
    mask = torch.zeros(1, 2, 224, 224, dtype=torch.bool)
    mask[:, :, :, 200:] = True
    c = sample_correspondences(weight_scale=torch.tensor(1.0), num_points=64, t_mask=mask, **args)
    idx = torch.round((1.0 / c.w2d[0, c.valid[0], 0] - 0.1) / 1e-7).long()
    j = args["buddies"][0, idx // (196 * 256), (idx // 256) % 196]
    assert ((j % 14) * 16 + idx % 16 >= 200).all()


def test_gradients_reach_flow_b_and_scale():
    args, _ = _scene()
    args["flow"] = args["flow"].requires_grad_()
    args["b"] = args["b"].float().requires_grad_()
    scale = torch.tensor(1.5, requires_grad=True)
    c = sample_correspondences(weight_scale=scale, num_points=32, **args)
    (c.x2d.sum() + c.w2d.sum()).backward()
    assert args["flow"].grad.abs().sum() > 0 and args["b"].grad.abs().sum() > 0 and scale.grad.abs() > 0
    assert not c.x3d.requires_grad


def test_shape_errors():
    args, _ = _scene()
    with pytest.raises(ValueError, match="t_depth"):
        sample_correspondences(weight_scale=torch.tensor(1.0), num_points=8,
                               **{**args, "t_depth": args["t_depth"][..., :100]})
    with pytest.raises(ValueError, match="num_points"):
        sample_correspondences(weight_scale=torch.tensor(1.0), num_points=0, **args)
