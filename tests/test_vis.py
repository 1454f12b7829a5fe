"""Tests of vpog.vis: flow colours, tile layout, overlays, correspondence drawings, PNG output."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

from vpog import vis
from vpog.ops import patch_flow_labels


def _labels():
    """Labels of a template equal to the query: buddy = patch itself, flow = offset from the centre."""
    H = W = 64
    K = torch.tensor([[[100.0, 0, 31.5], [0, 100, 31.5], [0, 0, 1]]])
    pose = torch.eye(4)[None].clone()
    pose[0, 2, 3] = 0.5
    depth = torch.full((1, H, W), 0.5)
    mask = torch.zeros(1, H, W, dtype=torch.bool)
    mask[:, 4:60, 6:48] = True  # covers the anchors of every patch it touches
    out = patch_flow_labels(depth, mask, K, pose, depth[:, None], mask[:, None], K[:, None], pose[:, None],
                            tau=torch.tensor([0.01]), backend="reference")
    return out, mask[0]


def test_hsv_to_rgb_matches_colorsys():
    rng = np.random.default_rng(0)
    h, s, v = rng.random((3, 50))
    got = vis.hsv_to_rgb(h, s, v)
    want = np.array([colorsys.hsv_to_rgb(*x) for x in zip(h, s, v)])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_flow_to_hsv_colours():
    flow = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]],
                         [[0.0, 1.0], [0.5, 0.0], [3.0, 0.0]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    img = vis.flow_to_hsv(flow, valid, max_magnitude=1.0)
    assert img.shape == (2, 3, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (255, 255, 255)  # no motion: white
    assert tuple(img[0, 1]) == (255, 0, 0)  # +u: red
    assert tuple(img[0, 2]) == (0, 255, 255)  # -u: cyan
    assert tuple(img[1, 0]) == (128, 255, 0)  # +v (down): hue 90 degrees
    assert tuple(img[1, 1]) == (255, 128, 128)  # half magnitude: half saturated
    assert tuple(img[1, 2]) == (0, 0, 0)  # invalid: black
    # default max magnitude = the largest valid one; saturation clips above it
    auto = vis.flow_to_hsv(flow, valid)
    assert tuple(auto[0, 1]) == (255, 0, 0)
    clipped = vis.flow_to_hsv(np.array([[[5.0, 0.0]]]), max_magnitude=1.0)
    assert tuple(clipped[0, 0]) == (255, 0, 0)
    with pytest.raises(ValueError, match="flow must have shape"):
        vis.flow_to_hsv(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="valid must have shape"):
        vis.flow_to_hsv(flow, valid[:1])


def test_patch_tiles_layout_and_dense_flow_image():
    labels, mask = _labels()
    flow, visible = labels.dense_flow[0, 0], labels.dense_visible[0, 0]
    assert torch.equal(torch.from_numpy(vis.patch_tiles_to_image(visible)), mask)  # identity pair
    img = vis.dense_flow_image(flow, visible)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    # pixel (16 ix + u, 16 iy + v) shows buddy pixel (u, v) of query patch (iy, ix)
    iy, ix, v, u = 1, 2, 3, 12
    want = vis.flow_to_hsv(flow[iy, ix, v, u][None, None], max_magnitude=1.0)[0, 0]
    assert tuple(img[16 * iy + v, 16 * ix + u]) == tuple(want)
    assert (img[~mask.numpy()] == 0).all()
    with pytest.raises(ValueError, match="tiles must have shape"):
        vis.patch_tiles_to_image(torch.zeros(4, 4, 16))


def test_patch_cls_image():
    labels, _ = _labels()
    cls = labels.patch_cls[0, 0].clone()
    cls[0, 0], cls[0, 1] = -1, 16
    img = vis.patch_cls_image(cls)
    assert img.shape == (64, 64, 3)
    assert (img[:16, :16] == 0).all()  # ignored: black
    assert (img[:16, 16:32] == 128).all()  # unseen: grey
    grid = vis.template_grid_image(4, 4)
    # a buddy has its template patch's colour (here the identity)
    assert tuple(img[40, 40]) == tuple(grid[40, 40])
    assert len({tuple(grid[16 * y + 8, 16 * x + 8]) for y in range(4) for x in range(4)}) == 16


def test_visibility_overlay():
    img = np.full((32, 32, 3), 100, np.uint8)
    visible = np.zeros((32, 32), bool)
    visible[:8] = True
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    out = vis.visibility_overlay(img, visible, mask=mask, alpha=0.5)
    assert tuple(out[0, 0]) == (50, 160, 50)
    assert tuple(out[10, 0]) == (165, 50, 50)  # on the object, hidden
    assert tuple(out[20, 0]) == (100, 100, 100)  # untouched
    tiles = torch.zeros(2, 2, 16, 16, dtype=torch.bool)
    tiles[1, 0] = True
    out = vis.visibility_overlay(torch.full((3, 32, 32), 0.5), tiles)
    assert tuple(out[20, 4]) != tuple(out[4, 4]) and tuple(out[4, 20]) == tuple(out[4, 4])
    with pytest.raises(ValueError, match="visible must have"):
        vis.visibility_overlay(img, visible[:4])


def test_template_visibility_map():
    labels, mask = _labels()
    cls = labels.patch_cls[0, 0].clone()
    visible = labels.dense_visible[0, 0].clone()
    assert np.array_equal(vis.template_visibility_map(cls, visible), mask.numpy())  # identity pair
    cls[1, 1] = 0  # query patch (1, 1) now matches template patch 0: its visible pixels move there
    cls[0, 0] = -1
    got = vis.template_visibility_map(cls, visible)
    want = mask.numpy().copy()
    want[16:32, 16:32] = False
    want[:16, :16] = visible[1, 1].numpy()
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="dense_visible must have shape"):
        vis.template_visibility_map(cls, visible[:, :, :8])


def test_draw_correspondences():
    q = np.zeros((20, 30, 3), np.uint8)
    t = np.full((24, 10, 3), 50, np.uint8)
    quv = np.array([[2.0, 5.0], [28.0, 18.0]])
    tuv = np.array([[3.0, 5.0], [1.0, 20.0]])
    colours = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    img = vis.draw_correspondences(q, t, quv, tuv, colours=colours, gap=6, radius=1)
    assert img.shape == (24, 30 + 6 + 10, 3)
    assert tuple(img[5, 2]) == (255, 0, 0) and tuple(img[5, 36 + 3]) == (255, 0, 0)
    assert (img[5, 2:40] == [255, 0, 0]).all()  # a horizontal line in between
    assert tuple(img[20, 37]) == (0, 0, 255)
    assert tuple(img[0, 20]) == (0, 0, 0) and tuple(img[0, 40]) == (50, 50, 50)  # images kept elsewhere
    assert tuple(img[22, 5]) == (255, 255, 255)  # below the shorter query: padding
    empty = vis.draw_correspondences(q, t, np.zeros((0, 2)), np.zeros((0, 2)), gap=6)
    assert empty.shape == img.shape
    with pytest.raises(ValueError, match="query_uv and template_uv"):
        vis.draw_correspondences(q, t, quv, tuv[:1])


def test_label_correspondences():
    labels, _ = _labels()
    cls, flow, visible = labels.patch_cls[0, 0], labels.dense_flow[0, 0], labels.dense_visible[0, 0]
    quv, tuv = vis.label_correspondences(cls, max_pairs=5)
    assert quv.shape == (5, 2) and tuv.shape == (5, 2)
    np.testing.assert_allclose(quv, tuv)  # identity pair: every buddy is the patch itself
    quv, tuv = vis.label_correspondences(cls, flow, visible, max_pairs=4, pixels_per_patch=3)
    assert len(quv) == 4 + 4 * 3
    np.testing.assert_allclose(quv, tuv, atol=1e-3)  # pixels land on themselves
    img = vis.draw_correspondences(torch.rand(3, 64, 64), torch.rand(3, 64, 64), quv, tuv)
    assert img.shape == (64, 136, 3)


def test_tile_and_save_png(tmp_path):
    a = vis.to_uint8_image(torch.rand(3, 10, 12))
    b = vis.depth_to_image(torch.rand(8, 8) + 0.1)
    grid = vis.tile_images([a, b, a], ncols=2, pad=2)
    assert grid.shape == (22, 26, 3)
    path = tmp_path / "sub" / "grid.png"
    vis.save_png(path, grid)
    back = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(back, grid)
    assert vis.to_uint8_image(torch.ones(4, 4, dtype=torch.bool)).max() == 255
    assert (vis.depth_to_image(torch.zeros(4, 4)) == 0).all()
    with pytest.raises(ValueError, match="image must have shape"):
        vis.to_uint8_image(torch.zeros(2, 4, 4, 4))
