"""`format=bop`: synthesis also writes a test split in BOP's "scenes" layout, laid out, formatted and annotated
as bop_toolkit writes and computes it (inout.py save_json, calc_gt_info.py, calc_gt_masks.py,
enumerate_test_targets.py). Files are read here with plain json and Pillow, never with the writer's code;
ground truth is checked against the model (PLY) projected and rendered independently."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic_sets import tiny_set_settings

pytestmark = pytest.mark.render

W, H = 128, 96
VISIB_DELTA_MM = 5.0  # BOP's tolerance for rendered images (docs/bop_datasets_format.md)
SCENE_FILES = {"scene_camera.json", "scene_gt.json", "scene_gt_info.json", "rgb", "depth", "mask", "mask_visib"}
GT_INFO_KEYS = {"bbox_obj", "bbox_visib", "px_count_all", "px_count_valid", "px_count_visib", "visib_fract"}


def bop_settings(out, **overrides) -> dict:
    """3 procedural objects, 2 training images, level-0 templates of 64 x 48, and a BOP test split of 5 images
    of 128 x 96 in scenes of 2 (scene 2 holds one image)."""
    test = {"format": "bop", "num_test_images": 5, "test_images_per_scene": 2, "test_object_ids": None}
    test.update({k: overrides.pop(k) for k in list(overrides) if k in test})
    base = {"num_objects": 3, "num_images": 2, "images_per_shard": 2, "template_size": [64, 48],
            "objects_per_image": [2, 3]}
    settings = tiny_set_settings(out, **{**base, **overrides})
    settings.update(test)
    return settings


@pytest.fixture(scope="module")
def bop_set(tmp_path_factory, require_egl):
    """Root of the tiny set with its BOP test split (shared: copy it before changing it)."""
    from vpog.data.synthesize import synthesize

    out = tmp_path_factory.mktemp("bop_set")
    synthesize(bop_settings(out))
    return out


# --------------------------------------------------------------------------------------------
# Reading, the toolkit's way (plain json / Pillow)


def toolkit_json_text(content) -> str:
    """What bop_toolkit's inout.save_json writes for `content` (inout.py l.101-142), from the test's side."""
    if isinstance(content, dict):
        lines = [f'  "{k}": {json.dumps(v, sort_keys=True)}' for k, v in sorted(content.items())]
        return "{\n" + ",\n".join(lines) + "\n}"
    lines = [f"  {json.dumps(v, sort_keys=True)}" for v in content]
    return "[\n" + ",\n".join(lines) + "\n]"


def load_int_keys(path):
    """inout.load_json(keys_to_int=True) for the top level."""
    return {int(k): v for k, v in json.loads(Path(path).read_text()).items()}


def scene_dirs(root):
    return sorted(p for p in (root / "test").iterdir())


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def pose(gt) -> np.ndarray:
    """T_m2c [4, 4] in metres from a scene_gt entry (mm)."""
    T = np.eye(4)
    T[:3, :3] = np.array(gt["cam_R_m2c"]).reshape(3, 3)
    T[:3, 3] = np.array(gt["cam_t_m2c"]) / 1000.0
    return T


def instances(root):
    """Every gt instance: (scene dir, im_id, gt_id, gt, gt_info, K, depth_mm [H, W], mask, mask_visib)."""
    for sd in scene_dirs(root):
        cams, gts = load_int_keys(sd / "scene_camera.json"), load_int_keys(sd / "scene_gt.json")
        infos = load_int_keys(sd / "scene_gt_info.json")
        for im_id in sorted(gts):
            K = np.array(cams[im_id]["cam_K"]).reshape(3, 3)
            depth = read_png(sd / "depth" / f"{im_id:06d}.png").astype(np.float64) * cams[im_id]["depth_scale"]
            for gt_id, gt in enumerate(gts[im_id]):
                mask = read_png(sd / "mask" / f"{im_id:06d}_{gt_id:06d}.png") == 255
                visib = read_png(sd / "mask_visib" / f"{im_id:06d}_{gt_id:06d}.png") == 255
                yield sd, im_id, gt_id, gt, infos[im_id][gt_id], K, depth, mask, visib


@functools.cache
def model_mesh(root, obj_id):
    import trimesh

    mesh = trimesh.load(Path(root) / "models" / f"obj_{obj_id:06d}.ply", process=False)
    mesh.apply_scale(0.001)
    return mesh


def model_points(root, obj_id, n=20000) -> np.ndarray:
    import trimesh

    pts, _ = trimesh.sample.sample_surface(model_mesh(root, obj_id), n, seed=0)
    return np.asarray(pts)


_RENDERER = {}


def render_model_depth_mm(root, obj_id, T, K, pad) -> np.ndarray:
    """Depth (mm) of the PLY model alone in pose T (metres) on a canvas of the image padded by `pad` pixels a
    side (image at offset (pad, pad)), rendered here independently of the writer."""
    from vpog.data.render import CV_TO_GL, Renderer, _import_pyrender, make_camera

    pyrender = _import_pyrender()
    renderer = _RENDERER.setdefault("r", Renderer())
    Kc = K.copy()
    Kc[0, 2] += pad
    Kc[1, 2] += pad
    scene = pyrender.Scene(bg_color=np.zeros(4))
    scene.add(make_camera(Kc, znear=0.01, zfar=20.0), pose=CV_TO_GL)
    scene.add(pyrender.Mesh.from_trimesh(model_mesh(root, obj_id)), pose=T)
    _, depth = renderer.render(scene, W + 2 * pad, H + 2 * pad, depth_only=True)
    return depth.astype(np.float64) * 1000.0


def distance(depth_mm, K) -> np.ndarray:
    xs = (np.arange(depth_mm.shape[1]) - K[0, 2]) / K[0, 0]
    ys = (np.arange(depth_mm.shape[0]) - K[1, 2]) / K[1, 1]
    return depth_mm * np.sqrt(xs[None] ** 2 + ys[:, None] ** 2 + 1)


def toolkit_bbox(mask, offset=0) -> list[int]:
    """misc.calc_2d_bbox of the mask's pixels: [x_min, y_min, x_max - x_min, y_max - y_min]."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()) - offset, int(ys.min()) - offset, int(xs.max() - xs.min()), int(ys.max() - ys.min())]


def digest(root, exclude=()) -> dict[str, str]:
    """sha1 of every file; of the decoded pixels for template PNGs (their bytes may differ between runs, their
    pixels may not: see test_synthesize._digest), without the templates' markers (they hold those bytes' CRCs)."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and ".vpog" not in str(p) and p.name != "synthesis.json"
                   and p.name != ".done.json")
    out = {}
    for p in files:
        rel = str(p.relative_to(root))
        if rel.startswith(tuple(exclude)):
            continue
        if rel.startswith("templates/") and p.suffix == ".png":
            out[rel] = hashlib.sha1(read_png(p).tobytes()).hexdigest()
        else:
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


BOP_ONLY = ("test/", "test_targets_bop19.json", "camera.json")


# --------------------------------------------------------------------------------------------
# Tests


def test_layout_files_and_json_format(bop_set):
    root = bop_set
    assert [p.name for p in scene_dirs(root)] == ["000000", "000001", "000002"]
    camera = json.loads((root / "camera.json").read_text())
    assert set(camera) == {"cx", "cy", "depth_scale", "fx", "fy", "height", "width"}
    assert (camera["width"], camera["height"], camera["depth_scale"]) == (W, H, 0.1)
    assert (root / "camera.json").read_text() == toolkit_json_text(camera)
    n_images = 0
    for sd, n_im in zip(scene_dirs(root), (2, 2, 1)):
        assert {p.name for p in sd.iterdir()} == SCENE_FILES
        texts = {name: (sd / name).read_text() for name in ("scene_camera.json", "scene_gt.json", "scene_gt_info.json")}
        raw = {name: json.loads(text) for name, text in texts.items()}
        for name, content in raw.items():
            assert sorted(content) == [str(i) for i in range(n_im)], name  # "<im_id>" keys, ids from 0
            assert texts[name] == toolkit_json_text(load_int_keys(sd / name)), f"{name} not formatted as save_json"
        expected = {"rgb": set(), "depth": set(), "mask": set(), "mask_visib": set()}
        for key in raw["scene_camera.json"]:
            im_id = int(key)
            cam, gts, infos = raw["scene_camera.json"][key], raw["scene_gt.json"][key], raw["scene_gt_info.json"][key]
            assert set(cam) == {"cam_K", "depth_scale"} and cam["depth_scale"] == 0.1
            assert len(cam["cam_K"]) == 9 and all(isinstance(v, float) for v in cam["cam_K"])
            assert cam["cam_K"] == [camera["fx"], 0.0, camera["cx"], 0.0, camera["fy"], camera["cy"], 0.0, 0.0, 1.0]
            assert isinstance(gts, list) and isinstance(infos, list) and len(gts) == len(infos) >= 2
            for gt, info in zip(gts, infos):
                assert set(gt) == {"cam_R_m2c", "cam_t_m2c", "obj_id"}
                assert len(gt["cam_R_m2c"]) == 9 and len(gt["cam_t_m2c"]) == 3
                assert all(isinstance(v, float) for v in gt["cam_R_m2c"] + gt["cam_t_m2c"])
                assert type(gt["obj_id"]) is int and gt["obj_id"] in (1, 2, 3)
                R = np.array(gt["cam_R_m2c"]).reshape(3, 3)
                np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
                assert np.linalg.det(R) > 0 and 100 < gt["cam_t_m2c"][2] < 5000  # millimetres
                assert set(info) == GT_INFO_KEYS
                assert all(type(info[k]) is int for k in ("px_count_all", "px_count_valid", "px_count_visib"))
                for k in ("bbox_obj", "bbox_visib"):
                    assert len(info[k]) == 4 and all(type(v) is int for v in info[k])
                assert type(info["visib_fract"]) is float
            expected["rgb"].add(f"{im_id:06d}.png")
            expected["depth"].add(f"{im_id:06d}.png")
            for sub in ("mask", "mask_visib"):
                expected[sub] |= {f"{im_id:06d}_{gt_id:06d}.png" for gt_id in range(len(gts))}
            with Image.open(sd / "rgb" / f"{im_id:06d}.png") as im:
                assert (im.format, im.mode, im.size) == ("PNG", "RGB", (W, H))
            with Image.open(sd / "depth" / f"{im_id:06d}.png") as im:
                assert im.format == "PNG" and im.size == (W, H)
                depth = np.asarray(im)
            assert depth.dtype == np.uint16 and (depth > 0).mean() > 0.5  # the background plane (0: no depth)
            for sub in ("mask", "mask_visib"):
                for gt_id in range(len(gts)):
                    with Image.open(sd / sub / f"{im_id:06d}_{gt_id:06d}.png") as im:
                        assert (im.format, im.mode, im.size) == ("PNG", "L", (W, H))
                        assert set(np.unique(np.asarray(im))) <= {0, 255}
            n_images += 1
        for sub, names in expected.items():
            assert {p.name for p in (sd / sub).iterdir()} == names, sub
    assert n_images == 5
    manifest = json.loads((root / "synthesis.json").read_text())
    assert manifest["complete"] and manifest["bop"]["complete"] and manifest["bop"]["scene_ids"] == [0, 1, 2]
    assert manifest["settings"]["format"] == "bop" and manifest["stats"]["test_images"] == 5
    assert manifest["bop"]["num_targets"] == len(json.loads((root / "test_targets_bop19.json").read_text()))


def test_poses_depth_and_masks_agree_with_the_model(bop_set):
    """cam_t_m2c is in mm and matches the images: the projected model covers the full mask; the model rendered
    in the gt pose has the depth image's depth (within 1 mm) on visible pixels and the full mask's silhouette."""
    root = bop_set
    checked = 0
    for sd, im_id, gt_id, gt, _, K, depth, mask, visib in instances(root):
        T = pose(gt)
        pts = model_points(root, gt["obj_id"])
        cam = pts @ T[:3, :3].T + T[:3, 3]
        uv = np.floor(cam[:, :2] / cam[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]] + 0.5).astype(int)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        proj = np.zeros_like(mask)
        proj[uv[inside, 1], uv[inside, 0]] = True
        if mask.sum() >= 30:
            grown = mask.copy()
            grown[1:] |= mask[:-1]
            grown[:-1] |= mask[1:]
            grown[:, 1:] |= grown[:, :-1].copy()
            grown[:, :-1] |= grown[:, 1:].copy()
            assert grown[uv[inside, 1], uv[inside, 0]].mean() > 0.99 and proj[mask].mean() > 0.9
        model_depth = render_model_depth_mm(root, gt["obj_id"], T, K, 0)
        assert (mask != (model_depth > 0)).sum() <= max(2, 0.01 * mask.sum()), "full mask vs the model's silhouette"
        sel = visib & (model_depth > 0)
        if sel.sum():
            err = np.abs(depth[sel] - model_depth[sel])
            q = np.quantile(err, 0.98)
            assert q < 1.0 and np.median(err) < 0.2, (sd.name, im_id, gt_id, q)
            checked += 1
    assert checked >= 10


def test_test_images_are_not_training_images(bop_set):
    train_poses = []
    with tarfile.open(bop_set / "train_pbr_web" / "shard-000000.tar") as tar:
        for m in tar.getmembers():
            if m.name.endswith(".gt.json"):
                train_poses += [np.array(g["cam_t_m2c"]) for g in json.loads(tar.extractfile(m).read())]
    test_poses = [np.array(inst[3]["cam_t_m2c"]) for inst in instances(bop_set)]
    assert len(train_poses) >= 4 and len(test_poses) >= 10
    assert min(np.abs(a - b).max() for a in train_poses for b in test_poses) > 1e-3


def test_gt_info_and_visibility_recomputed(bop_set):
    """gt_info from the masks and depth (calc_gt_info.py); mask_visib by the "bop19" rule with 5 mm from the depth
    image and the model rendered alone (calc_gt_masks.py); truncated objects counted whole."""
    root = bop_set
    occluded = truncated = 0
    for sd, im_id, gt_id, gt, info, K, depth, mask, visib in instances(root):
        assert not (visib & ~mask).any(), "mask_visib must lie inside mask"
        assert info["px_count_visib"] == visib.sum()
        assert info["px_count_valid"] == (mask & (depth > 0)).sum()
        assert info["visib_fract"] == pytest.approx(info["px_count_visib"] / info["px_count_all"], abs=1e-15)
        assert info["bbox_visib"] == (toolkit_bbox(visib) if visib.any() else [-1, -1, -1, -1])
        x, y, w, h = info["bbox_obj"]
        if not visib.any():
            assert info["bbox_obj"] == [-1, -1, -1, -1]
        elif x >= 0 and y >= 0 and x + w <= W - 1 and y + h <= H - 1:
            assert info["px_count_all"] == mask.sum() and info["bbox_obj"] == toolkit_bbox(mask)
        else:  # truncated: the whole silhouette, on a canvas three times the image (calc_gt_info.py)
            truncated += 1
            large = render_model_depth_mm(root, gt["obj_id"], pose(gt), K, max(W, H)) > 0
            assert abs(info["px_count_all"] - large.sum()) <= max(2, 0.01 * large.sum())
            assert info["px_count_all"] > mask.sum()
            assert np.abs(np.array(info["bbox_obj"]) - toolkit_bbox(large, max(W, H))).max() <= 1
        occluded += int(visib.sum() < mask.sum())
        model = render_model_depth_mm(root, gt["obj_id"], pose(gt), K, 0)
        d_model, d_scene = distance(model, K), distance(depth, K)
        ref = ((d_model - d_scene <= VISIB_DELTA_MM) | (d_scene == 0)) & (d_model > 0)
        assert (ref != visib).sum() <= max(2, 0.01 * visib.sum()), (sd.name, im_id, gt_id)
    assert occluded >= 3 and truncated >= 1


def test_targets_as_enumerate_test_targets(bop_set):
    expected = []
    for sd in scene_dirs(bop_set):
        gts, infos = load_int_keys(sd / "scene_gt.json"), load_int_keys(sd / "scene_gt_info.json")
        for im_id in sorted(gts):
            counts = {}
            for gt, info in zip(gts[im_id], infos[im_id]):
                if info["visib_fract"] >= 0.1:
                    counts[gt["obj_id"]] = counts.get(gt["obj_id"], 0) + 1
            expected += [{"scene_id": int(sd.name), "im_id": im_id, "obj_id": o, "inst_count": n}
                         for o, n in counts.items()]
    text = (bop_set / "test_targets_bop19.json").read_text()
    assert json.loads(text) == expected and text == toolkit_json_text(expected)
    assert all(list(t) == ["im_id", "inst_count", "obj_id", "scene_id"] for t in json.loads(text))


def test_enumerate_targets_rule(tmp_path):
    """The targets rule on hand-made annotations: visib_fract >= 0.1 counts (0.1 included), instances of one
    object are counted together, objects in the order of their first counted instance."""
    from vpog.data.bop_scenes import enumerate_test_targets

    sd = tmp_path / "test" / "000004"
    sd.mkdir(parents=True)
    gt = {"3": [{"obj_id": 5}, {"obj_id": 2}, {"obj_id": 5}, {"obj_id": 7}], "1": [{"obj_id": 2}]}
    info = {"3": [{"visib_fract": 0.1}, {"visib_fract": 0.5}, {"visib_fract": 0.9}, {"visib_fract": 0.0999}],
            "1": [{"visib_fract": 0.0}]}
    (sd / "scene_gt.json").write_text(json.dumps(gt))
    (sd / "scene_gt_info.json").write_text(json.dumps(info))
    (tmp_path / "test" / "not_a_scene").mkdir()
    assert enumerate_test_targets(tmp_path) == [{"im_id": 3, "inst_count": 2, "obj_id": 5, "scene_id": 4},
                                                {"im_id": 3, "inst_count": 1, "obj_id": 2, "scene_id": 4}]


def test_rerun_skips_finished_scenes_and_gives_identical_bytes(bop_set, tmp_path):
    """Resumable: a rerun renders only missing scenes (here in 2 worker processes: the same bytes as in-process,
    so the split does not depend on the worker count), ignores a crashed scene's temporary folder, and
    leaves finished scenes untouched."""
    from vpog.data.synthesize import synthesize

    other = tmp_path / "again"
    shutil.copytree(bop_set, other)
    reference = digest(bop_set)
    shutil.rmtree(other / "test" / "000000")
    shutil.rmtree(other / "test" / "000002")
    (other / "test_targets_bop19.json").unlink()
    crashed = other / ".vpog_synth" / "test" / "000000.tmp999"
    (crashed / "rgb").mkdir(parents=True)
    (crashed / "rgb" / "000000.png").write_bytes(b"half-written")
    kept = (other / "test" / "000001" / "scene_gt.json").stat().st_mtime_ns
    manifest = synthesize(bop_settings(other, num_workers=2))
    stats = manifest["stats"]
    assert (stats["test_images"], stats["scene_images"], stats["template_views"], stats["workers"]) == (3, 0, 0, 2)
    assert (other / "test" / "000001" / "scene_gt.json").stat().st_mtime_ns == kept
    assert digest(other) == reference
    assert [p.name for p in (other / "test").iterdir() if not p.name.isdigit()] == []
    # a complete set: nothing to do
    assert synthesize(bop_settings(other))["stats"]["test_images"] == 0
    assert digest(other) == reference


def test_gigapose_output_unchanged_and_switching_formats(bop_set, tmp_path):
    """format=gigapose writes no BOP files and the same training set, templates and models as format=bop; bop over
    a gigapose set adds the split (as a direct bop run writes it); gigapose over a bop set keeps it; other test
    settings over a bop set are refused, naming the setting."""
    from vpog.data.synthesize import ensure_synthetic_dataset, synthesize

    out = tmp_path / "set"
    manifest = synthesize(bop_settings(out, format="gigapose"))
    assert not (out / "test").exists() and not (out / "camera.json").exists()
    assert not (out / "test_targets_bop19.json").exists() and "bop" not in manifest
    assert manifest["stats"]["test_images"] == 0
    assert digest(out) == digest(bop_set, exclude=BOP_ONLY)

    # a set made before the BOP switch existed (manifest without the test keys) is still accepted
    path = out / "synthesis.json"
    old = json.loads(path.read_text())
    for key in ("format", "num_test_images", "test_images_per_scene", "test_object_ids"):
        del old["settings"][key]
    path.write_text(json.dumps(old))
    ensure_synthetic_dataset(tiny_set_settings(out, num_objects=3, num_images=2, images_per_shard=2,
                                               template_size=[64, 48], objects_per_image=[2, 3]))

    shard = out / "train_pbr_web" / "shard-000000.tar"
    kept = shard.stat().st_mtime_ns
    ensure_synthetic_dataset(bop_settings(out))  # complete as a training set, but without its test split
    assert shard.stat().st_mtime_ns == kept
    assert digest(out) == digest(bop_set)

    manifest = synthesize(bop_settings(out, format="gigapose", num_test_images=1))  # the trainer's settings
    assert (out / "test" / "000002").is_dir() and manifest["bop"]["complete"]
    assert manifest["settings"]["format"] == "bop" and manifest["settings"]["num_test_images"] == 5
    assert digest(out) == digest(bop_set)

    with pytest.raises(ValueError, match="num_test_images"):
        synthesize(bop_settings(out, num_test_images=6))
    with pytest.raises(ValueError, match="test_object_ids"):
        synthesize(bop_settings(out, test_object_ids=[1, 2]))


def test_test_object_ids(require_egl, tmp_path):
    from vpog.data.synthesize import synthesize

    out = tmp_path / "only2"
    settings = bop_settings(out, num_images=1, images_per_shard=1, image_size=[64, 48], num_test_images=2,
                            test_images_per_scene=1, test_object_ids=[2])
    manifest = synthesize(settings)
    assert manifest["bop"]["object_ids"] == [2] and manifest["bop"]["scene_ids"] == [0, 1]
    ids = {g["obj_id"] for sd in scene_dirs(out) for gts in load_int_keys(sd / "scene_gt.json").values() for g in gts}
    assert ids == {2}
    assert {t["obj_id"] for t in json.loads((out / "test_targets_bop19.json").read_text())} <= {2}
    assert sorted(json.loads((out / "models" / "models_info.json").read_text())) == ["1", "2", "3"]
    with pytest.raises(ValueError, match="test_object_ids"):
        synthesize(bop_settings(tmp_path / "bad", test_object_ids=[4]))


@pytest.mark.parametrize("overrides, match", [
    ({"format": "coco"}, "format"),
    ({"num_test_images": 0}, "num_test_images"),
    ({"test_images_per_scene": 0}, "test_images_per_scene"),
    ({"test_object_ids": []}, "test_object_ids"),
    ({"test_object_ids": 3}, "test_object_ids"),
])
def test_bad_settings_are_refused(tmp_path, overrides, match):
    from vpog.data.synthesize import synthesize

    with pytest.raises(ValueError, match=match):
        synthesize(bop_settings(tmp_path / "x", **overrides))


def test_depth_png_reads_as_the_toolkit_reads_it(bop_set):
    """A 16-bit greyscale PNG (the toolkit's save_depth writes one with pypng; imageio and Pillow read it)."""
    iio = pytest.importorskip("imageio.v2")
    path = bop_set / "test" / "000000" / "depth" / "000000.png"
    ref = np.asarray(iio.imread(path))
    assert ref.dtype == np.uint16 and np.array_equal(ref, read_png(path))
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        assert im.mode in ("I;16", "I")
