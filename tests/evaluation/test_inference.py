"""Pose inference pieces: cached group forward, groups, the nearest-template pose, PnP hypotheses."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from eval_scenes import DIAMETER, intrinsics, micro_model, query_and_templates, render_ellipsoid

from vpog.evaluation.correspondences import correspondences_from_labels
from vpog.evaluation.inference import (
    InferenceConfig,
    ObjectTemplates,
    encode,
    estimate_poses,
    farthest_point_subset,
    group_forward,
    neighbour_groups,
    solve_hypotheses,
    template_pose,
    template_scores,
)
from vpog.evaluation.metrics import rotation_error_deg
from vpog.geometry import look_at_pose, viewing_direction
from vpog.ops.patch_flow_labels import patch_flow_labels


@pytest.fixture(scope="module")
def tiny_model():
    return micro_model()


def _sphere_dirs(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    d = torch.randn(n, 3, generator=g)
    return d / d.norm(dim=-1, keepdim=True)


def _templates(n: int = 6) -> ObjectTemplates:
    """n ellipsoid templates (random RGB texture, exact depth and masks) around the view sphere."""
    dirs = _sphere_dirs(n)
    poses = look_at_pose(dirs, 0.5)
    K = intrinsics(700.0)
    depth, mask = zip(*[render_ellipsoid(K, T) for T in poses])
    g = torch.Generator().manual_seed(2)
    images = torch.rand(n, 3, 224, 224, generator=g) * torch.stack(mask)[:, None]
    return ObjectTemplates(7, images, torch.stack(mask), torch.stack(depth), K.expand(n, 3, 3).clone(), poses)


def test_group_forward_matches_model_forward(tiny_model):
    torch.manual_seed(3)
    B, S = 1, 2
    q = torch.rand(B, 3, 224, 224)
    t = torch.rand(B, S, 3, 224, 224)
    dirs = _sphere_dirs(B * S).view(B, S, 3)
    R = look_at_pose(dirs[:, 0], 0.5)[:, :3, :3]
    ref = tiny_model(q, t, dirs, dirs[:, 0], R)  # the model takes RGB in [0, 1]
    q_tok = encode(tiny_model, q)
    t_tok = encode(tiny_model, t.flatten(0, 1)).view(B, S, 196, -1)
    out = group_forward(tiny_model, q_tok, t_tok, dirs, dirs[:, 0], R)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.flow, ref.flow, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.flow_b, ref.flow_b, rtol=1e-4, atol=1e-4)


def test_groups_are_centre_then_nearest():
    dirs = _sphere_dirs(20)
    groups = neighbour_groups(dirs, torch.tensor([3, 11]), 4)
    assert groups[:, 0].tolist() == [3, 11]
    for row in groups:
        cos = dirs[row[1:]] @ dirs[row[0]]
        others = torch.tensor([i for i in range(20) if i not in row.tolist()])
        assert cos.min() >= (dirs[others] @ dirs[row[0]]).max() - 1e-6
        assert (cos[:-1] >= cos[1:] - 1e-6).all()
    fp = farthest_point_subset(dirs, 5)
    assert len(set(fp.tolist())) == 5 and fp[0] == 0


def test_template_pose_recovers_a_moved_view():
    """A query that sees the object as a template does (the camera turned towards the object, which
    sits off-centre and farther) is recovered by the nearest-template pose, up to the mask-area scale."""
    from vpog.evaluation.inference import _rotation_between

    d = torch.tensor([0.2, -0.4, 0.9])
    T_t = look_at_pose(d / d.norm(), 0.5)
    K_t = intrinsics(700.0)
    dep_t, m_t = render_ellipsoid(K_t, T_t)
    ray = torch.tensor([[0.04, -0.03, 1.0]])
    ray = ray / ray.norm()
    T_q = torch.eye(4)
    T_q[:3, :3] = _rotation_between(torch.tensor([[0.0, 0.0, 1.0]]), ray)[0] @ T_t[:3, :3]
    T_q[:3, 3] = 0.8 * ray[0]
    K_q = intrinsics(1000.0, 105.0, 118.0)
    _, m_q = render_ellipsoid(K_q, T_q)
    T = template_pose(T_t[None], K_t[None], m_t[None], K_q[None], m_q[None])[0]
    assert rotation_error_deg(T[None, :3, :3], T_q[None, :3, :3]).item() < 0.5
    assert (T[:3, 3] - T_q[:3, 3]).norm().item() < 0.02 * 0.8
    # Same crop camera and pose as the template: the template pose itself comes back.
    T_same = template_pose(T_t[None], K_t[None], m_t[None], K_t[None], m_t[None])[0]
    torch.testing.assert_close(T_same, T_t, atol=1e-4, rtol=0)


def test_hypotheses_pick_the_true_pose_from_labels():
    sc = query_and_templates()
    labels = patch_flow_labels(**sc, tau=torch.tensor([0.02 * DIAMETER]), backend="reference")
    corr = correspondences_from_labels(labels, sc["t_depth"], sc["t_mask"], sc["t_K"], sc["t_pose"],
                                       max_points=256)
    # A poor init (a template's pose): the winner is still the true pose.
    init = sc["t_pose"][:, 1]
    cfg = InferenceConfig(pnp_iter=10, init_proposals=32)
    pose, cost, valid, hyp = solve_hypotheses(corr, sc["q_K"], init, S=2, cfg=cfg)
    assert bool(valid.all()) and hyp.item() in range(4)
    assert rotation_error_deg(pose[:, :3, :3], sc["q_pose"][:, :3, :3]).item() < 0.05
    assert (pose[0, :3, 3] - sc["q_pose"][0, :3, 3]).norm().item() < 2e-4


def test_estimate_poses_runs_on_cpu(tiny_model):
    tpl = _templates(4)
    d_q = viewing_direction(tpl.poses[2:3])
    T_q = look_at_pose(d_q, 0.6)
    K_q = intrinsics(800.0)[None]
    _, m_q = render_ellipsoid(K_q[0], T_q[0])
    img = torch.rand(1, 3, 224, 224) * m_q
    cfg = InferenceConfig(group_size=2, candidate_batch=4, max_points=128, init_proposals=16, pnp_iter=5)
    tokens = encode(tiny_model, tpl.images)
    est = estimate_poses(tiny_model, img, m_q[None], K_q, tpl, cfg, template_tokens=tokens)
    assert est.pose.shape == (1, 4, 4) and est.group.shape == (1, 2) and est.scores.shape == (1, 4)
    assert torch.isfinite(est.pose).all() and torch.isfinite(est.scores).all()
    assert (est.group[:, 0] == est.template).all()
    assert torch.equal(est.template, est.scores.argmax(1))
    assert est.hypothesis.item() in (-1, 0, 1, 2, 3)
    # deterministic for a seed; template tokens computed inside give the same result
    again = estimate_poses(tiny_model, img, m_q[None], K_q, tpl, cfg)
    torch.testing.assert_close(again.pose, est.pose)
    torch.testing.assert_close(again.scores, est.scores)
    # coarse-to-fine candidates score only a subset
    coarse = estimate_poses(tiny_model, img, m_q[None], K_q, tpl,
                            InferenceConfig(group_size=2, num_candidates=2, refine_candidates=1, max_points=64,
                                            init_proposals=8, pnp_iter=2), template_tokens=tokens)
    assert int(torch.isfinite(coarse.scores).sum()) <= 3


def test_all_patches_unseen_falls_back_to_the_template_pose(tiny_model):
    # A barely trained network can rank "unseen" first on every query patch: no correspondence is
    # left, PnP is not valid, and the estimate is the nearest-template pose, flagged invalid.
    tpl = _templates(4)
    T_q = look_at_pose(viewing_direction(tpl.poses[1:2]), 0.6)
    K_q = intrinsics(800.0)[None]
    _, m_q = render_ellipsoid(K_q[0], T_q[0])
    img = torch.rand(1, 3, 224, 224) * m_q
    cfg = InferenceConfig(group_size=2, candidate_batch=4, max_points=64, init_proposals=8, pnp_iter=2)

    def unseen_first(module, args, logits):
        return torch.cat([logits[..., :-1], logits[..., :-1].amax(-1, keepdim=True) + 1.0], dim=-1)

    handle = tiny_model.cls_head.register_forward_hook(unseen_first)
    try:
        est = estimate_poses(tiny_model, img, m_q[None], K_q, tpl, cfg)
        # drop_unseen=False keeps each pair's best template patch: PnP runs on them
        kept = estimate_poses(tiny_model, img, m_q[None], K_q, tpl, replace(cfg, drop_unseen=False))
    finally:
        handle.remove()
    assert kept.num_points.item() > 0 and bool(kept.valid.all())
    assert est.num_points.tolist() == [0] and not bool(est.valid.any())
    assert est.hypothesis.tolist() == [-1] and torch.isinf(est.cost).all()
    torch.testing.assert_close(est.pose, est.template_pose)
    normal = estimate_poses(tiny_model, img, m_q[None], K_q, tpl, cfg)
    assert normal.num_points.item() > 0 and bool(normal.valid.all())


def test_template_scores_by_hand():
    # template 0: every query patch is seen, spread evenly over 4 patches; template 1: p(unseen) = 3/4,
    # the rest on one patch. Only the first 2 query patches are valid.
    logits = torch.full((1, 2, 196, 197), -1e4)
    logits[0, 0, :, :4] = 0.0
    logits[0, 1, :, 196] = math.log(3.0)
    logits[0, 1, :, 7] = 0.0
    valid = torch.zeros(1, 196, dtype=torch.bool)
    valid[0, :2] = True
    logits[0, :, 2:] = torch.randn(2, 194, 197)  # invalid patches must not count
    torch.testing.assert_close(template_scores(logits, valid, "visible"), torch.tensor([[1.0, 0.25]]))
    torch.testing.assert_close(template_scores(logits, valid, "buddy"), torch.tensor([[0.25, 0.25]]))
    with pytest.raises(ValueError, match="kind"):
        template_scores(logits, valid, "best")
    with pytest.raises(ValueError, match="template_score"):
        InferenceConfig(template_score="best")


def test_config_and_input_checks(tiny_model):
    with pytest.raises(ValueError, match="group_score"):
        InferenceConfig(group_score="max")
    with pytest.raises(ValueError, match="group_size"):
        InferenceConfig(group_size=0)
    with pytest.raises(ValueError, match="templates.depths"):
        ObjectTemplates(1, torch.zeros(2, 3, 224, 224), torch.zeros(2, 224, 224, dtype=torch.bool),
                        torch.zeros(3, 224, 224), torch.eye(3).expand(2, 3, 3), torch.eye(4).expand(2, 4, 4))
    with pytest.raises(ValueError, match="images"):
        estimate_poses(tiny_model, torch.zeros(1, 3, 64, 64), None, torch.eye(3)[None], _templates(2))
