"""Tangent-chart coordinates (s1, s2) of template directions and the token position layouts (docs/conventions.md §5)."""

from __future__ import annotations

import math

import pytest
import torch

from vpog.geometry import look_at_pose, quaternion_to_matrix
from vpog.model.s2rope_positions import chart_axes, frame_positions, group_positions, tangent_chart


def _ref(B=3, dtype=torch.float64):
    d_ref = torch.nn.functional.normalize(torch.randn(B, 3, dtype=dtype), dim=-1)
    R = look_at_pose(d_ref, 0.5)[..., :3, :3]
    return d_ref, R


def _rotate_towards(d_ref, axis, angle):
    """Direction at `angle` from d_ref along the unit tangent `axis`."""
    return math.cos(angle) * d_ref + math.sin(angle) * axis


def test_axes_orthonormal_and_follow_camera_rows():
    d_ref, R = _ref(5)
    e1, e2 = chart_axes(d_ref, R)
    for a, b, want in ((e1, e1, 1), (e2, e2, 1), (e1, e2, 0), (e1, d_ref, 0), (e2, d_ref, 0)):
        torch.testing.assert_close((a * b).sum(-1), torch.full((5,), float(want), dtype=torch.float64))
    # look_at's camera rows are already orthogonal to d_ref: the axes are the rows themselves
    torch.testing.assert_close(e1, R[:, 0])
    torch.testing.assert_close(e2, R[:, 1])


def test_chart_values_along_axes():
    d_ref, R = _ref(4)
    e1, e2 = chart_axes(d_ref, R)
    angles = [0.0, 0.3, 1.2, 2.5]
    dirs = torch.stack(
        [_rotate_towards(d_ref, e1, a) for a in angles] + [_rotate_towards(d_ref, -e2, a) for a in angles], dim=1
    )  # [B, 8, 3]
    s = tangent_chart(dirs, d_ref, R)
    assert s.dtype == torch.float32 and s.shape == (4, 8, 2)
    want = torch.tensor([[a, 0.0] for a in angles] + [[0.0, -a] for a in angles], dtype=torch.float32)
    torch.testing.assert_close(s, want.expand(4, -1, -1), atol=1e-6, rtol=1e-6)


def test_chart_norm_is_the_view_angle_and_rotation_invariant():
    d_ref, R = _ref(6)
    dirs = torch.nn.functional.normalize(torch.randn(6, 7, 3, dtype=torch.float64), dim=-1)
    s = tangent_chart(dirs, d_ref, R)
    angle = torch.arccos((dirs * d_ref[:, None]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(s.double().norm(dim=-1), angle, atol=1e-6, rtol=1e-6)
    # rotating the object frame (directions, d_ref and the camera axes together) changes nothing
    G = quaternion_to_matrix(torch.randn(6, 4, dtype=torch.float64))
    s_rot = tangent_chart(dirs @ G.transpose(-1, -2), (G @ d_ref[..., None])[..., 0], R @ G.transpose(-1, -2))
    torch.testing.assert_close(s_rot, s, atol=1e-6, rtol=1e-6)


def test_chart_degenerate_points_and_unnormalised_input():
    d_ref, R = _ref(2)
    dirs = torch.stack([d_ref, -d_ref, 3.0 * d_ref], dim=1)
    s = tangent_chart(dirs, 2.0 * d_ref, R)
    want = torch.tensor([[0.0, 0.0], [math.pi, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(s, want.expand(2, -1, -1), atol=1e-6, rtol=0)
    assert torch.isfinite(s).all()


def test_chart_axes_orthonormalised_against_d_ref():
    # camera rows that are not orthogonal to d_ref (reference direction drawn among the positives)
    d_ref, R = _ref(3)
    tilt = torch.nn.functional.normalize(d_ref + 0.2 * R[:, 0], dim=-1)
    e1, e2 = chart_axes(tilt, R)
    for a, b in ((e1, tilt), (e2, tilt), (e1, e2)):
        torch.testing.assert_close((a * b).sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert ((e1 * R[:, 0]).sum(-1) > 0.9).all() and ((e2 * R[:, 1]).sum(-1) > 0.9).all()


def test_chart_shape_errors():
    d_ref, R = _ref(2)
    with pytest.raises(ValueError, match="dirs"):
        tangent_chart(torch.zeros(2, 3), d_ref, R)
    with pytest.raises(ValueError, match="d_ref"):
        tangent_chart(torch.zeros(2, 4, 3), d_ref[:1], R)
    with pytest.raises(ValueError, match="ref_R"):
        tangent_chart(torch.zeros(2, 4, 3), d_ref, R[:, :2])


def test_group_and_frame_layouts():
    chart = torch.tensor([[[0.5, -0.25], [1.0, 2.0]]])  # B = 1, S = 2
    pos = group_positions(chart)
    assert pos.shape == (1, 196 + 2 * 197, 4) and pos.dtype == torch.float32
    # query: patch j = 14 iy + ix at (iy, ix, 0, 0)
    torch.testing.assert_close(pos[0, 14 * 3 + 5], torch.tensor([3.0, 5.0, 0.0, 0.0]))
    # template 1 (second), patch 13 = (0, 13) at its chart coordinates; its unseen token at 0
    start = 196 + 197
    torch.testing.assert_close(pos[0, start + 13], torch.tensor([0.0, 13.0, 1.0, 2.0]))
    torch.testing.assert_close(pos[0, start + 196], torch.zeros(4))
    torch.testing.assert_close(pos[0, 196 + 196], torch.zeros(4))
    torch.testing.assert_close(pos[0, 196 + 195], torch.tensor([13.0, 13.0, 0.5, -0.25]))
    f = frame_positions(True)
    assert f.shape == (197, 4)
    torch.testing.assert_close(f[:196], pos[0, :196])
    torch.testing.assert_close(f[196], torch.zeros(4))
    assert frame_positions(False).shape == (196, 4)
