"""vpog.data.diameters: BOP diameters of point sets and meshes, back-projection of template depth."""

from __future__ import annotations

import numpy as np
import pytest

from vpog.data import diameters as dm


def _brute(points: np.ndarray) -> float:
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    return float(d.max())


@pytest.mark.parametrize("shape", ["gauss", "sphere", "flat", "two"])
def test_point_set_diameter_is_exact(shape):
    rng = np.random.default_rng(3)
    pts = {"gauss": rng.normal(size=(700, 3)) * [3.0, 1.0, 0.2],
           "sphere": (lambda v: v / np.linalg.norm(v, axis=1, keepdims=True))(rng.normal(size=(500, 3))),
           "flat": np.c_[rng.normal(size=(300, 2)), np.zeros(300)],  # coplanar: plain qhull rejects it, "QJ" joggles
           "two": np.array([[0.0, 0, 0], [1.0, 2.0, 2.0]])}[shape]
    assert dm.point_set_diameter(pts) == pytest.approx(_brute(pts), rel=1e-12)


def test_pruned_search_without_scipy_is_exact():
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(900, 3)) * [2.0, 1.0, 0.5]
    assert dm._max_pairwise(dm._prune(pts)) == pytest.approx(_brute(pts), rel=1e-12)


def test_point_set_diameter_degenerate():
    assert dm.point_set_diameter(np.zeros((0, 3))) == 0.0
    assert dm.point_set_diameter(np.array([[1.0, 2.0, 3.0], [np.nan, 0, 0]])) == 0.0


def test_obj_vertices(tmp_path):
    obj = tmp_path / "model.obj"
    obj.write_text("# box\nmtllib x.mtl\nv -1 -0.6 -0.4\nv 1 0.6 0.4 1.0\nvt 0.5 0.5\nvn 0 0 1\n"
                   "v\t1e-1 -2.5E+0 3\nf 1 2 3\n")
    v = dm.read_mesh_vertices(obj)
    np.testing.assert_allclose(v, [[-1, -0.6, -0.4], [1, 0.6, 0.4], [0.1, -2.5, 3]])
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no vertices"):
        dm.read_mesh_vertices(empty)


def test_megapose_mesh_paths(tmp_path):
    gigapose = tmp_path / "models" / "models_normalized" / "abc" / "meshes" / "model.obj"
    gigapose.parent.mkdir(parents=True)
    gigapose.write_text("v 0 0 0\n")
    assert dm.megapose_mesh_path(tmp_path, {"gso_id": "abc"}) == gigapose
    gigapose.unlink()
    gso = tmp_path / "models_normalized" / "abc" / "meshes" / "model.obj"
    gso.parent.mkdir(parents=True)
    gso.write_text("v 0 0 0\n")
    assert dm.megapose_mesh_path(tmp_path, {"gso_id": "abc"}) == gso
    assert dm.megapose_mesh_path(tmp_path, {"gso_id": "missing"}) is None
    sn = tmp_path / "models_orig" / "0287" / "src1" / "models" / "model_normalized.obj"
    sn.parent.mkdir(parents=True)
    sn.write_text("v 0 0 0\n")
    assert dm.megapose_mesh_path(tmp_path, {"shapenet_synset_id": "0287", "shapenet_source_id": "src1"}) == sn
    assert dm.megapose_mesh_path(tmp_path, {"obj_id": 1}) is None


def test_spread_views_cover_the_sphere():
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(162, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    idx = dm.spread_views(dirs, 24)
    assert len(np.unique(idx)) == 24
    # every direction is within 45 degrees of a chosen one
    assert (dirs @ dirs[idx].T).max(axis=1).min() > np.cos(np.radians(45))
    np.testing.assert_array_equal(dm.spread_views(dirs, 500), np.arange(162))


def test_backproject_to_model_inverts_the_projection():
    rng = np.random.default_rng(1)
    K = np.array([[500.0, 0.3, 160.2], [0, 480.0, 119.7], [0, 0, 1]])
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, [0.02, -0.01, 0.8]
    depth = np.zeros((240, 320), np.float32)
    depth[100, 150], depth[30, 7] = 0.75, 0.9
    pts = dm.backproject_to_model(depth, K, T)
    cam = pts @ R.T + T[:3, 3]
    uv = cam @ K.T
    uv = uv[:, :2] / uv[:, 2:]
    np.testing.assert_allclose(sorted(map(tuple, uv)), [(7.0, 30.0), (150.0, 100.0)], atol=1e-9)
    np.testing.assert_allclose(sorted(cam[:, 2]), [0.75, 0.9], atol=1e-6)


def test_cache_round_trip_and_scale_mismatch(tmp_path):
    path = tmp_path / "c" / "diameters.json"
    c = dm.DiameterCache(path, 10.0)
    c.values = {3: (0.1, "templates"), 7: (0.2466, "mesh")}
    c.save()
    assert dm.DiameterCache(path, 10.0).values == c.values
    assert dm.DiameterCache(path, 1.0).values == {}  # another scale: measured again
    path.write_text("{not json")
    assert dm.DiameterCache(path, 10.0).values == {}
