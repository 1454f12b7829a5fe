"""Synthesis writes the formats GigaPose trains from (BOP-webdataset shards, GigaPose templates, models_info), and
what it writes is geometrically right."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

from tests.data.template_views import assert_views_as_before
from vpog.data.rle import rle_to_mask

pytestmark = pytest.mark.render

MEMBERS = {"rgb.jpg", "depth.png", "camera.json", "gt.json", "gt_info.json", "mask.json", "mask_visib.json"}


def read_shards(root):
    """{key: {ext: bytes}} of every shard under root/train_pbr_web."""
    out = {}
    for tar_path in sorted((root / "train_pbr_web").glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def model_points(root, obj_id, n=20000):
    """Surface samples of the BOP model (read from its PLY, mm -> m) [n, 3]."""
    import trimesh

    mesh = trimesh.load(root / "models" / f"obj_{obj_id:06d}.ply", process=False)
    mesh.apply_scale(0.001)
    pts, _ = trimesh.sample.sample_surface(mesh, n, seed=0)
    return np.asarray(pts)


def project(T, K, pts):
    cam = pts @ T[:3, :3].T + T[:3, 3]
    uv = cam[:, :2] / cam[:, 2:3] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
    return np.floor(uv + 0.5).astype(int), cam[:, 2]


def backproject_to_model(mask, depth, K, T):
    v, u = np.nonzero(mask & (depth > 0))
    z = depth[v, u]
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=1)
    return (cam - T[:3, 3]) @ T[:3, :3]


def dilate(mask):
    """3x3 binary dilation."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
    return out


def check_pose_against_render(T, K, mask, depth, pts, visible=None):
    """The pose puts the model on its silhouette (both ways, 1-pixel tolerance) and the rendered depth on the
    model's surface."""
    from scipy.spatial import cKDTree

    H, W = mask.shape
    uv, _ = project(T, K, pts)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    proj = np.zeros_like(mask)
    proj[uv[inside, 1], uv[inside, 0]] = True
    in_mask = dilate(mask)[uv[inside, 1], uv[inside, 0]].mean()
    covered = dilate(proj)[mask].mean()
    assert in_mask > 0.99 and covered > 0.99, f"model projection vs silhouette: {in_mask:.3f}, {covered:.3f}"
    sel = mask if visible is None else visible
    dist, _ = cKDTree(pts).query(backproject_to_model(sel, depth, K, T))
    q = np.quantile(dist, 0.97)
    assert q < 0.004, f"depth off the model surface: 97% quantile of the distance {q:.4f} m"


def test_layout_and_members(tiny_set):
    root = tiny_set
    k2s = json.loads((root / "key_to_shard.json").read_text())
    samples = read_shards(root)
    assert sorted(k2s) == sorted(samples) and len(k2s) == 9
    for key, shard in k2s.items():
        assert key == f"{int(key[:6]):06d}_{int(key[7:]):06d}"
        with tarfile.open(root / "train_pbr_web" / f"shard-{shard:06d}.tar") as tar:
            assert f"{key}.gt.json" in tar.getnames()
    for members in samples.values():
        assert set(members) == MEMBERS
        cam = json.loads(members["camera.json"])
        assert set(cam) == {"cam_K", "depth_scale"} and cam["depth_scale"] == 0.1 and len(cam["cam_K"]) == 9
        gt, info = json.loads(members["gt.json"]), json.loads(members["gt_info.json"])
        assert len(gt) == len(info) == 2
        for g in gt:
            assert set(g) == {"obj_id", "cam_R_m2c", "cam_t_m2c"} and len(g["cam_R_m2c"]) == 9
            assert 100 < g["cam_t_m2c"][2] < 5000  # millimetres
        for i in info:
            assert set(i) == {"bbox_obj", "bbox_visib", "px_count_all", "px_count_valid", "px_count_visib",
                              "visib_fract"}
        for name in ("mask.json", "mask_visib.json"):
            masks = json.loads(members[name])
            assert sorted(masks) == ["0", "1"]
            assert all(isinstance(r["counts"], list) and r["size"] == [96, 128] for r in masks.values())
        depth = np.asarray(Image.open(io.BytesIO(members["depth.png"])))
        assert depth.dtype == np.uint16 and depth.shape == (96, 128) and (depth > 0).all()  # background plane
        assert np.asarray(Image.open(io.BytesIO(members["rgb.jpg"]))).shape == (96, 128, 3)
    info = json.loads((root / "models" / "models_info.json").read_text())
    assert sorted(info) == ["1", "2"]
    for entry in info.values():
        assert 200.0 <= entry["diameter"] <= 200.0 * 3 ** 0.5 + 1e-3  # max extent 0.2 m, in mm
        assert abs(max(entry["size_x"], entry["size_y"], entry["size_z"]) - 200.0) < 1e-2
    manifest = json.loads((root / "synthesis.json").read_text())
    assert manifest["complete"] and manifest["stats"]["template_views"] == 2 * 42
    assert manifest["stats"]["template_views_per_second_per_process"] > 0


def test_models_info_gigapose_list_and_bop_dict(tiny_set):
    """ROOT/models_info.json is the list GigaPose's training loader iterates; models/models_info.json is BOP's
    dict; both carry the same BOP fields (diameter in mm, bounding box)."""
    root = tiny_set
    listed = json.loads((root / "models_info.json").read_text())
    bop = json.loads((root / "models" / "models_info.json").read_text())
    assert isinstance(listed, list) and isinstance(bop, dict)
    # GigaPose's TemplateDataset.from_config: for model_info in model_infos: obj_id = model_info["obj_id"]
    # (template dir `{dir}/{obj_id:06d}`, pose_path `{dir}/object_poses/OBJECT_ID.npy` with the id filled in)
    templates = root / "templates" / "synthetic"
    ids = []
    for model_info in listed:
        obj_id = model_info["obj_id"]
        assert isinstance(obj_id, int) and not isinstance(obj_id, bool)
        assert (templates / f"{obj_id:06d}" / "000000.png").is_file()
        pose_path = str(templates / "object_poses" / "OBJECT_ID.npy").replace("OBJECT_ID", f"{obj_id:06d}")
        assert np.load(pose_path).shape == (42, 4, 4)
        ids.append(obj_id)
    assert ids == [1, 2]  # one entry per object, in id order
    assert sorted(bop) == [str(i) for i in ids]
    for entry in listed:
        ref = bop[str(entry["obj_id"])]
        assert entry["label"] == ref["source"] == f"procedural_{entry['obj_id']:06d}"
        assert entry["diameter"] == ref["diameter"] and 200.0 <= entry["diameter"] <= 200.0 * 3 ** 0.5 + 1e-3
        assert {k: v for k, v in entry.items() if k not in ("obj_id", "label")} == ref
    # vpog reads the root file (the list) to the same {obj_id: info} as BOP's dict
    from vpog.data.sources import load_models_info

    loaded = load_models_info(root)
    assert sorted(loaded) == [1, 2]
    assert all(loaded[o]["diameter"] == bop[str(o)]["diameter"] for o in loaded)
    # the manifest says how GigaPose reads the set: true-scale templates, scale_factor 1 (not MegaPose's 10)
    giga = json.loads((root / "synthesis.json").read_text())["gigapose"]
    assert giga["scale_factor"] == 1.0 and giga["depth_scale"] == 10.0
    assert giga["level_templates"] == 0 and giga["num_templates"] == 42 and giga["dataset_name"] == "synthetic"
    assert giga["models_info"].startswith("models_info.json") and giga["templates"].startswith("templates/synthetic/")


def test_pose_projects_into_visible_mask_and_depth_agrees(tiny_set):
    root = tiny_set
    pts = {o: model_points(root, o) for o in (1, 2)}
    occluded = 0
    for members in read_shards(root).values():
        cam = json.loads(members["camera.json"])
        K = np.array(cam["cam_K"]).reshape(3, 3)
        depth = np.asarray(Image.open(io.BytesIO(members["depth.png"]))).astype(np.float64) * cam["depth_scale"] / 1000
        gt, info = json.loads(members["gt.json"]), json.loads(members["gt_info.json"])
        masks, visib = json.loads(members["mask.json"]), json.loads(members["mask_visib.json"])
        for i, g in enumerate(gt):
            T = np.eye(4)
            T[:3, :3] = np.array(g["cam_R_m2c"]).reshape(3, 3)
            T[:3, 3] = np.array(g["cam_t_m2c"]) / 1000
            mask, mask_v = rle_to_mask(masks[str(i)]), rle_to_mask(visib[str(i)])
            assert not (mask_v & ~mask).any(), "visible mask must lie inside the full mask"
            assert info[i]["px_count_all"] == mask.sum() and info[i]["px_count_visib"] == mask_v.sum()
            occluded += int(mask_v.sum() < mask.sum())
            if info[i]["px_count_all"] < 50 or info[i]["visib_fract"] < 0.2:
                continue
            # amodal silhouette vs the projected model; visible pixels' depth on the model surface
            check_pose_against_render(T, K, mask, depth, pts[g["obj_id"]], visible=mask_v)
            ys, xs = np.nonzero(mask_v)
            assert info[i]["bbox_visib"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert occluded >= 3, "scenes should contain occluded instances (mask_visib != mask)"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_masks_decode_like_pycocotools(tiny_set):
    mask_util = pytest.importorskip("pycocotools.mask")
    n = 0
    for members in read_shards(tiny_set).values():
        for name in ("mask.json", "mask_visib.json"):
            for rle in json.loads(members[name]).values():
                h, w = rle["size"]
                ref = mask_util.decode(mask_util.frPyObjects(rle, h, w)).astype(bool)
                assert np.array_equal(ref, rle_to_mask(rle))
                assert mask_util.area(mask_util.frPyObjects(rle, h, w)) == ref.sum()
                n += 1
    assert n == 9 * 2 * 2


def test_webdataset_reads_shards(tiny_set):
    wds = pytest.importorskip("webdataset")
    urls = sorted(str(p) for p in (tiny_set / "train_pbr_web").glob("shard-*.tar"))
    keys = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        assert MEMBERS <= set(sample)
        assert json.loads(sample["gt.json"])[0]["obj_id"] in (1, 2)
        keys.append(sample["__key__"])
    assert sorted(keys) == sorted(json.loads((tiny_set / "key_to_shard.json").read_text()))


def test_template_poses_match_template_images(tiny_set):
    from vpog.data.templates import read_camera, template_poses, viewing_directions

    root = tiny_set / "templates"
    K, W, H = read_camera(root, "synthetic")
    assert (W, H) == (160, 120)
    for obj_id in (1, 2):
        poses = np.load(root / "synthetic" / "object_poses" / f"{obj_id:06d}.npy")
        assert poses.shape == (42, 4, 4)
        # GigaPose's level-0 views, only the distance scaled; millimetres
        np.testing.assert_allclose(viewing_directions(poses), viewing_directions(template_poses(0)), atol=1e-9)
        assert 150 < np.linalg.norm(poses[0, :3, 3]) < 2000
        pts = model_points(tiny_set, obj_id)
        for view in (0, 7, 23, 41):
            rgba = np.asarray(Image.open(root / "synthetic" / f"{obj_id:06d}" / f"{view:06d}.png"))
            depth = np.asarray(Image.open(root / "synthetic" / f"{obj_id:06d}" / f"{view:06d}_depth.png"))
            assert rgba.shape == (H, W, 4) and depth.dtype == np.uint16
            mask = rgba[..., 3] > 127
            assert np.array_equal(mask, depth > 0)
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()), "clipped"
            T = poses[view].copy()
            T[:3, 3] /= 1000
            check_pose_against_render(T, K, mask, depth.astype(np.float64) / 1000, pts)


def test_render_pixel_convention(require_egl):
    """A point at (u, v) in OpenCV pixel coordinates (integer = pixel centre) renders in pixel round(u, v)."""
    import trimesh

    from vpog.data.render import CV_TO_GL, Renderer, _import_pyrender, make_camera

    pyrender = _import_pyrender()
    K = np.array([[50.0, 0, 31.0], [0, 50.0, 23.0], [0, 0, 1]])
    renderer = Renderer()
    for e in (-0.1, 0.1, 0.4, 0.6, 0.9):
        # a quad covering x >= X_e, y >= Y_e at z = 1: its corner projects to (41 + e, 30 + e)
        xe, ye = (10 + e) / 50, (7 + e) / 50
        quad = trimesh.Trimesh([[xe, ye, 1], [5, ye, 1], [5, 5, 1], [xe, 5, 1]],
                               [[0, 1, 2], [0, 2, 3], [0, 2, 1], [0, 3, 2]])  # two-sided
        scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.ones(3))
        scene.add(make_camera(K), pose=CV_TO_GL)
        scene.add(pyrender.Mesh.from_trimesh(quad))
        rgb, depth = renderer.render(scene, 64, 48, flat=True)
        cols, rows = np.flatnonzero(depth.max(0) > 0), np.flatnonzero(depth.max(1) > 0)
        assert cols.min() == int(np.ceil(41 + e)) and rows.min() == int(np.ceil(30 + e)), e
        assert np.array_equal(rgb.max(-1) > 0, depth > 0)
    renderer.close()


def _digest(root) -> dict[str, str]:
    """sha1 of every file of a set; of the decoded pixels (and mode) for template PNGs, whose bytes may differ
    between runs (ISA-L's deflate can pick other matches) while their pixels may not; without the markers,
    which hold those bytes' CRCs."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".vpog" not in str(p) and p.name != "synthesis.json"
                   and p.name != ".done.json")
    out = {}
    for p in files:
        rel = str(p.relative_to(root))
        if rel.startswith("templates/") and p.suffix == ".png":
            with Image.open(p) as im:
                out[rel] = im.mode + hashlib.sha1(np.asarray(im).tobytes()).hexdigest()
        else:
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def test_deterministic_parallel_and_resumable(tiny_set, tiny_settings, tmp_path):
    from vpog.data.synthesize import synthesize

    # the same set again, with two worker processes: byte-identical shards and models, pixel-identical templates,
    # the same views as before the threaded writer (the fixture, on the renderer it was made with)
    other = tmp_path / "again"
    synthesize(tiny_settings(other, num_workers=2))
    reference = _digest(tiny_set)
    assert _digest(other) == reference
    assert_views_as_before(other / "templates" / "synthetic")

    # resume: remove a shard and an object's templates; a rerun redoes only those
    (other / "train_pbr_web" / "shard-000001.tar").unlink()
    shutil.rmtree(other / "templates" / "synthetic" / "000002")
    kept = (other / "train_pbr_web" / "shard-000000.tar").stat().st_mtime_ns
    manifest = synthesize(tiny_settings(other))
    assert manifest["stats"]["scene_images"] == 3 and manifest["stats"]["template_views"] == 42
    assert (other / "train_pbr_web" / "shard-000000.tar").stat().st_mtime_ns == kept
    assert _digest(other) == reference

    # a rerun with other content settings is refused, naming the setting
    with pytest.raises(ValueError, match="seed"):
        synthesize(tiny_settings(other, seed=4))


def test_user_meshes(require_egl, tiny_settings, tmp_path):
    import trimesh
    from PIL import Image as PILImage

    from vpog.data.synthesize import synthesize

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    box = trimesh.creation.box(extents=[30.0, 60.0, 90.0])  # millimetres: normalisation rescales
    box.visual.vertex_colors = np.tile([200, 30, 30, 255], (len(box.vertices), 1))
    box.export(meshes / "a_box.ply")
    cyl = trimesh.creation.cylinder(radius=0.05, height=0.3)
    cyl.export(meshes / "b_cylinder.stl")
    sphere = trimesh.creation.uv_sphere(radius=0.1)
    tex = PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    sphere.visual = trimesh.visual.TextureVisuals(uv=sphere.vertices[:, :2] * 5 + 0.5,
                                                  material=trimesh.visual.material.SimpleMaterial(image=tex))
    sphere.export(meshes / "c_sphere.glb")
    cone = trimesh.creation.cone(radius=0.04, height=0.1)
    cone.visual.face_colors = np.tile([20, 200, 20, 255], (len(cone.faces), 1))
    cone.export(meshes / "d_cone.obj")
    out = tmp_path / "set"
    synthesize(tiny_settings(out, meshes=str(meshes), num_objects=None, num_images=2, images_per_shard=2,
                             template_size=[64, 48], image_size=[64, 48]))
    info = json.loads((out / "models" / "models_info.json").read_text())
    names = ["a_box.ply", "b_cylinder.stl", "c_sphere.glb", "d_cone.obj"]
    assert [info[str(i)]["source"] for i in range(1, 5)] == names
    listed = json.loads((out / "models_info.json").read_text())
    assert [(e["obj_id"], e["label"]) for e in listed] == list(zip(range(1, 5), names))
    np.testing.assert_allclose(info["1"]["diameter"], 200.0 * np.linalg.norm([1 / 3, 2 / 3, 1]), rtol=1e-4)
    for i in range(1, 5):
        assert len(list((out / "templates" / "synthetic" / f"{i:06d}").glob("*_depth.png"))) == 42
    # the textured sphere keeps its texture in the templates: many distinct colours
    rgba = np.asarray(Image.open(out / "templates" / "synthetic" / "000003" / "000000.png"))
    assert len(np.unique(rgba[rgba[..., 3] > 0][:, :3], axis=0)) > 20


def test_cli_rejects_unknown_keys(tmp_path, capsys):
    pytest.importorskip("hydra", reason="the CLI composes its config with hydra-core")
    from vpog.data.synthesize import main

    with pytest.raises(SystemExit) as exc:
        main([f"out={tmp_path}", "num_object=3"])
    assert exc.value.code == 2
    assert "num_objects" in capsys.readouterr().err


def test_no_gl_gives_a_clear_error(tiny_settings, tmp_path, monkeypatch):
    pytest.importorskip("pyrender")
    import vpog.data.render as render
    from vpog.data.synthesize import synthesize

    monkeypatch.setattr(render, "egl_available", lambda: (False, "headless OpenGL (EGL) unavailable: test"))
    with pytest.raises(render.RenderError, match="libegl1"):
        synthesize(tiny_settings(tmp_path / "x"))


def test_triton_imports_after_rendering(require_egl):
    """Mesa's LLVM loaded before Triton's crashes `import triton`; vpog.data.render loads Triton first."""
    pytest.importorskip("triton")
    import subprocess
    import sys

    code = ("from vpog.data.render import egl_available\n"
            "assert egl_available()[0]\n"
            "import triton, triton.language\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
