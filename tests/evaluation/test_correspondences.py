"""Correspondences from labels and predictions, and the labels -> correspondences -> PnP check."""

from __future__ import annotations

import pytest
import torch
from eval_scenes import AXES, CENTRE, DIAMETER, query_and_templates

from vpog.evaluation.correspondences import (
    build_correspondences,
    correspondences_from_labels,
    correspondences_from_output,
)
from vpog.geometry import NUM_PATCHES, pose_vector_to_matrix, project, rotation_angle_deg, transform_points
from vpog.ops.patch_flow_labels import patch_flow_labels
from vpog.ops.pnp_solve import pnp_solve


@pytest.fixture(scope="module")
def scene():
    sc = query_and_templates()
    labels = patch_flow_labels(**sc, tau=torch.tensor([0.02 * DIAMETER]), backend="reference")
    return sc, labels


def _on_ellipsoid(x3d: torch.Tensor) -> torch.Tensor:
    a = torch.tensor(AXES)
    return (((x3d - torch.tensor(CENTRE)) / a) ** 2).sum(-1)


def test_ground_truth_correspondences_are_consistent(scene):
    sc, labels = scene
    c = correspondences_from_labels(labels, sc["t_depth"], sc["t_mask"], sc["t_K"], sc["t_pose"], max_points=600,
                                    pixels_per_patch=8)
    assert c.x3d.shape == (1, 600, 3) and c.x2d.shape == (1, 600, 2) and c.w2d.shape == (1, 600, 2)
    used = c.w2d[0, :, 0] > 0
    assert int(c.count) == int(used.sum()) == 600
    assert set(c.template[0][used].tolist()) == {0, 1}  # both templates contribute
    # x3d are template depth pixels lifted to the model frame: they lie on the ellipsoid surface.
    assert torch.allclose(_on_ellipsoid(c.x3d[0][used]), torch.ones(int(used.sum())), atol=2e-3)
    # x2d are where those points project in the query under the true pose (exact labels).
    uv = project(transform_points(sc["q_pose"][0], c.x3d[0]), sc["q_K"][0])
    assert (uv - c.x2d[0])[used].abs().max() < 1e-2
    # no (template, query patch) pair gives more than pixels_per_patch points
    pair = c.template[0][used] * NUM_PATCHES + c.query_patch[0][used]
    assert pair.unique(return_counts=True)[1].max() <= 8
    assert (labels.patch_cls.reshape(1, 2, NUM_PATCHES)[0, c.template[0][used], c.query_patch[0][used]] < 196).all()


def test_labels_through_pnp_give_the_true_pose(scene):
    """End to end: labels (docs/conventions.md §4) -> correspondences -> random-init LM solver -> the query pose."""
    sc, labels = scene
    c = correspondences_from_labels(labels, sc["t_depth"], sc["t_mask"], sc["t_K"], sc["t_pose"], max_points=512)
    res = pnp_solve(c.x3d, c.x2d, c.w2d, sc["q_K"], generator=torch.Generator().manual_seed(0))
    T = pose_vector_to_matrix(res.pose)
    assert bool(res.valid.all())
    rot = rotation_angle_deg(T[0, :3, :3].double(), sc["q_pose"][0, :3, :3].double()).item()
    trans_mm = (T[0, :3, 3] - sc["q_pose"][0, :3, 3]).norm().item() * 1000
    assert rot < 0.02 and trans_mm < 0.1, (rot, trans_mm)


def test_padding_when_few_candidates(scene):
    sc, labels = scene
    buddies = labels.patch_cls.reshape(1, 2, NUM_PATCHES).clone()
    buddies[:, :, 10:] = -1  # only the first 10 query patches keep a buddy
    weight = labels.dense_visible.reshape(1, 2, NUM_PATCHES, 16, 16).float()
    c = build_correspondences(buddies, labels.dense_flow.reshape(1, 2, NUM_PATCHES, 16, 16, 2), weight,
                              sc["t_depth"], sc["t_mask"], sc["t_K"], sc["t_pose"], max_points=4000,
                              pixels_per_patch=256)
    n_real = int((weight[:, :, :10] > 0).sum())
    assert int(c.count) <= n_real and c.x3d.shape[1] == 4000
    pad = c.template[0] < 0
    assert (c.w2d[0][pad] == 0).all() and torch.isfinite(c.x2d).all() and torch.isfinite(c.x3d).all()


def test_from_output_weights_and_unseen():
    from vpog.model.vpog import VPOGOutput

    torch.manual_seed(0)
    B, S = 1, 2
    logits = torch.randn(B, S, NUM_PATCHES, NUM_PATCHES + 1)
    logits[:, 1, :, NUM_PATCHES] = 50.0  # template 1: every query patch says "unseen"
    flow_b = torch.full((B, S, NUM_PATCHES, 16, 16), 0.5)
    out = VPOGOutput(logits=logits, flow=torch.zeros(B, S, NUM_PATCHES, 16, 16, 2), flow_b=flow_b,
                     buddies=logits[..., :NUM_PATCHES].argmax(-1), chart=torch.zeros(B, S, 2),
                     weight_scale=torch.tensor(2.0))
    depth = torch.full((B, S, 224, 224), 0.5)
    mask = torch.ones(B, S, 224, 224, dtype=torch.bool)
    K = torch.tensor([[500.0, 0, 112], [0, 500.0, 112], [0, 0, 1]]).expand(B, S, 3, 3)
    T = torch.eye(4).expand(B, S, 4, 4)
    c = correspondences_from_output(out, depth, mask, K, T, max_points=256, weight_by_probability=False)
    used = c.template[0] >= 0
    assert (c.template[0][used] == 0).all()  # template 1 dropped as unseen
    assert torch.allclose(c.w2d[0][used], torch.full_like(c.w2d[0][used], 4.0))  # scale / b = 2 / 0.5
    c2 = correspondences_from_output(out, depth, mask, K, T, max_points=256, weight_by_probability=True)
    p = logits[0, 0].softmax(-1).amax(-1)
    assert c2.w2d[0, :, 0].max() <= 4.0 * p.max() + 1e-6


def test_bad_inputs_name_the_argument(scene):
    sc, labels = scene
    args = (labels.patch_cls.reshape(1, 2, NUM_PATCHES), labels.dense_flow.reshape(1, 2, NUM_PATCHES, 16, 16, 2),
            labels.dense_visible.reshape(1, 2, NUM_PATCHES, 16, 16).float(),
            sc["t_depth"], sc["t_mask"], sc["t_K"], sc["t_pose"])
    with pytest.raises(ValueError, match="weight"):
        build_correspondences(*args[:2], args[2][..., :8], *args[3:])
    with pytest.raises(ValueError, match="t_K"):
        build_correspondences(*args[:5], args[5][:, :1], args[6])
    with pytest.raises(ValueError, match="max_points"):
        build_correspondences(*args, max_points=0)
    with pytest.raises(ValueError, match="buddies"):
        build_correspondences(args[0].float(), *args[1:])
