"""vpog against golden GigaPose / MegaPose fixtures: one metric world for queries, templates and diameters.

The fixture in tests/data/fixtures/gigapose/ reproduces, at a tiny scale, what a user downloads and renders
for GigaPose training. That is MegaPose-GSO and -ShapeNet BOP-webdataset shards (objects at MegaPose's 0.1
scene scale, mm, depth_scale 0.1) plus GigaPose's templates (rendered 10x larger, mm). The files are built
by the fixture's own generator (make_gigapose_fixture.py) following the upstream writers, not by vpog's
writers. The object is an analytic box, so every expected value below is exact geometry:

- GSO box: half-sizes (1.0, 0.6, 0.4) x 0.1 m in the scenes (diameter 0.1 * 2 * |h|).
- ShapeNet box: the same shape with a bounding-box diagonal of 1, x 0.1 m in the scenes (diameter 0.1 m).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vpog.data.dataset import DataConfig, TrainSetConfig, VPOGDataset
from vpog.data.rle import rle_to_mask
from vpog.data.sources import TrainingSource
from vpog.ops import patch_flow_labels

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "gigapose"
TEMPLATES = FIXTURE / "templates"
SCALE = 10.0  # GigaPose configs/data/megapose.yaml: template_config.scale_factor

GSO_HALF_NORMALISED = np.array([1.0, 0.6, 0.4])
SETS = {
    # name: (obj_id, half-sizes in the query world (m), true diameter (m), number of images)
    "gso": (7, 0.1 * GSO_HALF_NORMALISED, 0.1 * 2 * np.linalg.norm(GSO_HALF_NORMALISED), 2),
    "shapenet": (3, 0.1 * GSO_HALF_NORMALISED / (2 * np.linalg.norm(GSO_HALF_NORMALISED)), 0.1, 1),
}
QUERIES = [(name, i) for name, spec in SETS.items() for i in range(spec[3])]
NUM_PATCHES = 196


def corners(half: np.ndarray) -> np.ndarray:
    return np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64) * half


def project(points: np.ndarray, K: np.ndarray, T: np.ndarray) -> np.ndarray:
    cam = points @ T[:3, :3].T + T[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:3]


def backproject(depth: np.ndarray, K: np.ndarray, T: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with their depth (camera z, metres) -> model-frame points [N, 3]."""
    v, u = np.nonzero(mask)
    z = depth[v, u].astype(np.float64)
    pix = np.stack([u, v, np.ones_like(u)], axis=1).astype(np.float64)
    cam = (pix @ np.linalg.inv(K).T) * z[:, None]
    return (cam - T[:3, 3]) @ T[:3, :3]


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(u_min, v_min, u_max, v_max) of the pixel centres of a mask."""
    v, u = np.nonzero(mask)
    return np.array([u.min(), v.min(), u.max(), v.max()], dtype=np.float64)


def assert_on_box_surface(points: np.ndarray, half: np.ndarray, tol: float = 1e-3) -> None:
    """Every point lies on the box surface: along its dominant axis |p_k| = h_k within `tol` metres."""
    assert len(points) > 100
    ratio = np.abs(points) / half
    k = ratio.argmax(axis=1)
    off = np.abs(points[np.arange(len(points)), k]) - half[k]
    assert np.abs(off).max() <= tol, f"points off the box surface by up to {np.abs(off).max() * 1000:.3f} mm"


def read_shard(root: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} of shard-000000.tar, read with the stdlib (independent of vpog's shard index)."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(root / "train_pbr_web" / "shard-000000.tar") as tar:
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gigapose_index")


@pytest.fixture(scope="module")
def sources(cache_dir):
    """TrainingSource per set at scale_factor 10 (GigaPose's), index cache outside the fixture folder.

    The cache folder is the one `datasets(name, 10.0)` uses, so diameters measured on the templates are
    measured once (a few seconds each)."""
    return {name: TrainingSource(name, FIXTURE / name, TEMPLATES, index_cache_dir=cache_dir / f"ds_{name}_10" / name,
                                 scale_factor=SCALE, missing_templates="error") for name in SETS}


@pytest.fixture(scope="module")
def datasets(cache_dir):
    """VPOGDataset(train=False) per (set, scale_factor), built on first use."""
    made = {}

    def get(name: str, scale: float) -> VPOGDataset:
        if (name, scale) not in made:
            train = TrainSetConfig(name=name, root=str(FIXTURE / name), templates=str(TEMPLATES), scale_factor=scale)
            cfg = DataConfig(name="gigapose_fixture", batch_size=1, num_positive_templates=4, num_negative_templates=2,
                             train_datasets=[train], index_cache_dir=str(cache_dir / f"ds_{name}_{scale:g}"))
            made[name, scale] = VPOGDataset(cfg, train=False)
        return made[name, scale]

    return get


# ------------------------------------------------------------------------------------------------
# a. One metric world: query patches find their buddies in the nearest template (and not at the wrong scale)


def buddy_fraction(sample: dict) -> float:
    """Share of the query's valid patches (patch_cls != -1) with a buddy in the first (nearest) template."""
    assert bool(sample["is_positive"][0])
    d, m, K, T = sample["depths"], sample["masks"], sample["K"], sample["T_m2c"]
    labels = patch_flow_labels(d[:1], m[:1], K[:1], T[:1], d[None, 1:], m[None, 1:], K[None, 1:], T[None, 1:],
                               (0.02 * sample["diameter"]).reshape(1), backend="reference")
    cls = labels.patch_cls[0, 0]
    valid = cls != -1
    assert int(valid.sum()) >= 20, "too few valid query patches to judge"
    return float(((cls >= 0) & (cls < NUM_PATCHES)).sum() / valid.sum())


@pytest.mark.parametrize("name,index", QUERIES)
def test_one_metric_world_buddies(datasets, name, index):
    sample = datasets(name, SCALE)[index]
    assert sample["depths"].dtype == torch.float32
    frac = buddy_fraction(sample)
    assert frac >= 0.9, f"{name}[{index}]: only {frac:.0%} of the valid query patches have a buddy at scale_factor 10"


@pytest.mark.parametrize("name,index", QUERIES)
def test_wrong_scale_factor_loses_buddies(datasets, name, index):
    """scale_factor 1 leaves the templates 10x too large and far: the fixture catches the 10x error."""
    frac = buddy_fraction(datasets(name, 1.0)[index])
    assert frac < 0.05, f"{name}[{index}]: {frac:.0%} buddies with the wrong scale_factor; the fixture is too weak"


def test_sample_world_is_metric(datasets):
    """The sample's query and template translations are in the same metres (|t| of the templates = 4.93 m / 10)."""
    sample = datasets("gso", SCALE)[0]
    t = sample["T_m2c"][:, :3, 3].norm(dim=1)
    assert 0.7 <= float(t[0]) <= 0.95  # the query: 0.7..0.9 m away
    assert torch.allclose(t[1:], torch.full_like(t[1:], 4.9315 / SCALE), rtol=1e-3)
    assert abs(float(sample["diameter"]) - SETS["gso"][2]) <= 0.01 * SETS["gso"][2]


# ------------------------------------------------------------------------------------------------
# b. Diameters


def test_gso_diameter_from_mesh(sources):
    obj_id, _, true, _ = SETS["gso"]
    src = sources["gso"]
    assert src.diameter_source(obj_id) == "mesh"
    assert src.diameter(obj_id) == pytest.approx(true, rel=0.01)


def test_gso_diameter_from_templates_without_mesh(tmp_path):
    obj_id, _, true, _ = SETS["gso"]
    root = tmp_path / "gso"
    shutil.copytree(FIXTURE / "gso", root, ignore=shutil.ignore_patterns("models_normalized"))
    src = TrainingSource("gso", root, TEMPLATES, index_cache_dir=tmp_path / "idx", scale_factor=SCALE)
    assert src.diameter_source(obj_id) == "templates"
    assert src.diameter(obj_id) == pytest.approx(true, rel=0.01)


def test_gso_diameter_with_gigapose_mesh_layout(tmp_path):
    """GigaPose keeps the GSO meshes in gso/models/models_normalized/ (render_gso_templates.py L104, L145-150):
    vpog finds the mesh there too."""
    obj_id, _, true, _ = SETS["gso"]
    root = tmp_path / "gso"
    shutil.copytree(FIXTURE / "gso", root, ignore=shutil.ignore_patterns("models_normalized"))
    shutil.copytree(FIXTURE / "gso" / "models_normalized", root / "models" / "models_normalized")
    src = TrainingSource("gso", root, TEMPLATES, index_cache_dir=tmp_path / "idx", scale_factor=SCALE)
    assert src.diameter_source(obj_id) == "mesh"
    assert src.diameter(obj_id) == pytest.approx(true, rel=0.01)


def test_shapenet_diameter_from_templates(sources):
    obj_id, _, true, _ = SETS["shapenet"]
    src = sources["shapenet"]
    assert src.diameter_source(obj_id) == "templates"
    assert src.diameter(obj_id) == pytest.approx(true, rel=0.01)


def test_gigapose_diameter_json_is_not_a_diameter():
    """GigaPose's diameter.json holds norm(2 x AABB extents) x 1000 of the normalised mesh: the template
    distance. Read naively as a BOP diameter in mm, it is 20x the scene object's diameter for this box."""
    entries = json.loads((TEMPLATES / "gso" / "diameter.json").read_text())
    assert isinstance(entries, list) and entries[0]["obj_id"] == 7
    naive_m = entries[0]["diameter"] / 1000.0
    assert 19.0 < naive_m / SETS["gso"][2] < 21.0


# ------------------------------------------------------------------------------------------------
# c. Poses agree with the rendered pixels


@pytest.mark.parametrize("name", list(SETS))
@pytest.mark.parametrize("view", [0, 40, 100])
def test_template_pose_matches_pixels(sources, name, view):
    obj_id, half, _, _ = SETS[name]
    src = sources[name]
    poses, dirs = src.template_poses(obj_id)
    assert poses.shape == (162, 4, 4) and poses.dtype == np.float32 and dirs.shape == (162, 3)
    K = np.asarray(src.template_K, dtype=np.float64)
    T = poses[view].astype(np.float64)
    rgba, depth = src.read_template(obj_id, view)
    alpha = rgba[..., 3] >= 128
    assert alpha.any() and np.array_equal(alpha, depth > 0)
    assert not rgba[~alpha, :3].any()  # colour zero outside the object
    uv = project(corners(half), K, T)
    proj_box = np.concatenate([uv.min(0), uv.max(0)])
    assert np.abs(proj_box - mask_box(alpha)).max() <= 2.0, (proj_box, mask_box(alpha))
    assert_on_box_surface(backproject(depth, K, T, alpha), half)


@pytest.mark.parametrize("name,index", QUERIES)
def test_query_pose_matches_pixels(name, index):
    obj_id, half, _, _ = SETS[name]
    members = read_shard(FIXTURE / name)[f"000000_{index:06d}"]
    camera, gt, info = (json.loads(members[k]) for k in ("camera.json", "gt.json", "gt_info.json"))
    K = np.array(camera["cam_K"], dtype=np.float64).reshape(3, 3)
    T = np.eye(4)
    T[:3, :3] = np.array(gt[0]["cam_R_m2c"]).reshape(3, 3)
    T[:3, 3] = np.array(gt[0]["cam_t_m2c"]) / 1000.0
    assert gt[0]["obj_id"] == obj_id
    mask = rle_to_mask(json.loads(members["mask_visib.json"])["0"])
    depth_m = np.asarray(Image.open(io.BytesIO(members["depth.png"])), dtype=np.float64) * camera["depth_scale"] / 1000
    assert mask.shape == depth_m.shape == (240, 320) and np.array_equal(mask, depth_m > 0)
    x0, y0, x1, y1 = mask_box(mask).astype(int)
    assert info[0]["bbox_visib"] == [x0, y0, x1 - x0, y1 - y0]  # bop_toolkit calc_2d_bbox: w = xmax - xmin
    assert info[0]["px_count_visib"] == int(mask.sum())
    uv = project(corners(half), K, T)
    proj_box = np.concatenate([uv.min(0), uv.max(0)])
    assert np.abs(proj_box - mask_box(mask)).max() <= 2.0, (proj_box, mask_box(mask))
    assert_on_box_surface(backproject(depth_m, K, T, mask), half)


# ------------------------------------------------------------------------------------------------
# d. An independent RLE decoder agrees


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2 (copy keyword)
@pytest.mark.parametrize("name,index", QUERIES)
def test_mask_rle_matches_pycocotools(name, index):
    mask_utils = pytest.importorskip("pycocotools.mask")
    members = read_shard(FIXTURE / name)[f"000000_{index:06d}"]
    for member in ("mask_visib.json", "mask.json"):
        rle = json.loads(members[member])["0"]
        h, w = rle["size"]
        ref = mask_utils.decode(mask_utils.frPyObjects(rle, h, w)).astype(bool)
        ours = rle_to_mask(rle)
        assert ref.shape == ours.shape == (240, 320)
        assert ref.any() and np.array_equal(ref, ours)
