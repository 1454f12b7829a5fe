"""Camera and pose conventions (docs/conventions.md §1)."""

from __future__ import annotations

import pytest
import torch

from vpog import geometry as g


def _random_rotation(n, dtype=torch.float64):
    return g.quaternion_to_matrix(torch.randn(n, 4, dtype=dtype))


def test_patch_grid():
    c = g.patch_centres()
    assert c.shape == (196, 2)
    assert torch.equal(c[0], torch.tensor([7.5, 7.5]))
    assert torch.equal(c[14 * 3 + 5], torch.tensor([16 * 5 + 7.5, 16 * 3 + 7.5]))  # j = 14 iy + ix
    assert torch.equal(g.patch_anchors()[0], torch.tensor([8.0, 8.0]))


def test_project_backproject_roundtrip():
    K = torch.tensor([[572.4, 0, 320.0], [0, 573.6, 240.0], [0, 0, 1]], dtype=torch.float64)
    uv = torch.rand(50, 2, dtype=torch.float64) * 640
    z = torch.rand(50, dtype=torch.float64) + 0.3
    X = g.backproject(uv, z, K)
    assert torch.allclose(X[:, 2], z)
    assert torch.allclose(g.project(X, K), uv, atol=1e-9)


def test_quaternion_roundtrip_and_pose_vector():
    R = _random_rotation(200)
    q = g.matrix_to_quaternion(R)
    assert torch.allclose(q.norm(dim=-1), torch.ones(200, dtype=torch.float64))
    assert (q[:, 0] >= 0).all()
    assert torch.allclose(g.quaternion_to_matrix(q), R, atol=1e-12)
    T = torch.eye(4, dtype=torch.float64).repeat(200, 1, 1)
    T[:, :3, :3] = R
    T[:, :3, 3] = torch.randn(200, 3, dtype=torch.float64)
    assert torch.allclose(g.pose_vector_to_matrix(g.matrix_to_pose_vector(T)), T, atol=1e-12)


def test_invert_and_transform():
    R = _random_rotation(10)
    T = torch.eye(4, dtype=torch.float64).repeat(10, 1, 1)
    T[:, :3, :3], T[:, :3, 3] = R, torch.randn(10, 3, dtype=torch.float64)
    assert torch.allclose(g.invert_pose(T) @ T, torch.eye(4, dtype=torch.float64).expand(10, 4, 4), atol=1e-12)
    pts = torch.randn(10, 7, 3, dtype=torch.float64)
    back = g.transform_points(g.invert_pose(T), g.transform_points(T, pts))
    assert torch.allclose(back, pts, atol=1e-12)


def test_viewing_direction_is_camera_centre_direction():
    d = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=-1)
    T = g.look_at_pose(d, 0.7)
    assert torch.allclose(g.viewing_direction(T), d, atol=1e-12)
    # the object origin projects onto the optical axis
    origin_cam = T[:, :3, 3]
    assert torch.allclose(origin_cam[:, :2], torch.zeros(20, 2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(origin_cam[:, 2], torch.full((20,), 0.7, dtype=torch.float64))
    assert g.rigid_error(T).max() < 1e-12


def test_check_rigid_rejects_non_rigid():
    T = torch.eye(4).repeat(3, 1, 1)
    g.check_rigid("pose", T)
    T[1, 0, 0] = 2.0
    with pytest.raises(ValueError, match="pose must hold rigid transforms"):
        g.check_rigid("pose", T)
    T[1, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        g.check_rigid("pose", T)


def test_rotation_angle():
    R = _random_rotation(5)
    assert torch.allclose(g.rotation_angle_deg(R, R), torch.zeros(5, dtype=torch.float64), atol=1e-5)
    Rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    assert torch.allclose(g.rotation_angle_deg(R, R @ Rz), torch.full((5,), 90.0, dtype=torch.float64))
