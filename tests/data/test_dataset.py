"""The VPOG loader on a tiny synthetic set: docs/conventions.md §3 batches, workers, bad data skipped and counted."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from vpog.config_schema import from_mapping
from vpog.data import DataConfig, MixedSampler, VPOGBatch, VPOGDataset, build_train_loader, collate_vpog
from vpog.data.bop_writer import write_shard
from vpog.data.rle import mask_to_rle
from vpog.data.templates import scaled_K

pytestmark = pytest.mark.render  # the fixture set is rendered


def config(root, name="synthetic", **over) -> DataConfig:
    cfg = {"batch_size": 4, "num_positive_templates": 3, "num_negative_templates": 2,
           "train_datasets": [{"name": name, "root": str(root), "templates": str(root / "templates")}]}
    cfg.update(over)
    return from_mapping(DataConfig, cfg, "data")


def copy_set(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".vpog_index"))
    return dst


def surface_tree(root, obj_id):
    import trimesh
    from scipy.spatial import cKDTree

    mesh = trimesh.load(root / "models" / f"obj_{obj_id:06d}.ply", process=False)
    mesh.apply_scale(0.001)
    pts, _ = trimesh.sample.sample_surface(mesh, 20000, seed=0)
    return cKDTree(pts), np.asarray(pts, dtype=np.float32)


def test_batch_obeys_spec(tiny_set):
    cfg = config(tiny_set)
    ds = VPOGDataset(cfg, train=True, seed=0)
    assert len(ds) == ds.index_stats["synthetic"]["usable_instances"] > 0
    sampler = MixedSampler(ds.source_sizes, ds.ratios, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), sampler=sampler, collate_fn=collate_vpog)
    batch = next(iter(loader))
    assert isinstance(batch, VPOGBatch)
    B, S, C = len(ds), 5, 224
    expect = {"images": ((B, S + 1, 3, C, C), torch.float32), "masks": ((B, S + 1, C, C), torch.bool),
              "depths": ((B, S + 1, C, C), torch.float32), "K": ((B, S + 1, 3, 3), torch.float32),
              "M": ((B, S + 1, 3, 3), torch.float32), "T_m2c": ((B, S + 1, 4, 4), torch.float32),
              "d_ref": ((B, 3), torch.float32), "template_dirs": ((B, S, 3), torch.float32),
              "query_dir": ((B, 3), torch.float32), "is_positive": ((B, S), torch.bool),
              "template_ids": ((B, S), torch.int64), "obj_id": ((B,), torch.int64),
              "diameter": ((B,), torch.float32), "dataset_id": ((B,), torch.int64)}
    for name, (shape, dtype) in expect.items():
        value = getattr(batch, name)
        assert tuple(value.shape) == shape and value.dtype == dtype, name
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert batch.is_positive[:, :3].all() and not batch.is_positive[:, 3:].any()
    assert batch.skipped == {} and len(set(batch.keys)) == B

    src = ds.sources[0]
    info = json.loads((tiny_set / "models" / "models_info.json").read_text())
    trees = {o: surface_tree(tiny_set, o) for o in (1, 2)}
    for b in range(B):
        obj = int(batch.obj_id[b])
        poses, dirs = src.template_poses(obj)
        T_q = batch.T_m2c[b, 0].double()
        d_q = -(T_q[:3, :3].T @ T_q[:3, 3])
        d_q = (d_q / d_q.norm()).numpy()
        np.testing.assert_allclose(batch.query_dir[b].numpy(), d_q, atol=1e-5)
        ids = batch.template_ids[b].numpy()
        dots = dirs @ d_q
        assert ids[0] == np.argmax(dots), "t* must be the template nearest the query's view"
        to_star = dirs @ dirs[ids[0]]
        assert to_star[ids[1:3]].min() >= np.sort(to_star)[-3] - 1e-9, "positives: t* and its nearest templates"
        assert (np.degrees(np.arccos(np.clip(dots[ids[3:]], -1, 1))) >= 90).all(), "negatives >= 90 degrees"
        np.testing.assert_allclose(batch.d_ref[b].numpy(), dirs[ids[0]], atol=1e-6)
        np.testing.assert_allclose(batch.template_dirs[b].numpy(), dirs[ids], atol=1e-6)
        np.testing.assert_allclose(batch.T_m2c[b, 1:].numpy(), poses[ids], atol=1e-6)
        assert abs(float(batch.diameter[b]) - info[str(obj)]["diameter"] / 1000) < 1e-6
        # crops: K_crop = M K, and every view's depth lies on the model surface under its pose (metres)
        tree, pts = trees[obj]
        for v in range(S + 1):
            K, M = batch.K[b, v].double(), batch.M[b, v].double()
            full_K = torch.from_numpy(src.template_K if v else scaled_K(128, 96))  # the scenes' camera
            torch.testing.assert_close(K, M @ full_K, rtol=1e-6, atol=1e-4)
            mask, depth = batch.masks[b, v], batch.depths[b, v]
            assert mask.any() and (depth[mask] > 0).float().mean() > 0.95
            ys, xs = torch.nonzero(mask & (depth > 0), as_tuple=True)
            z = depth[ys, xs].double()
            cam = torch.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], dim=-1)
            T = batch.T_m2c[b, v].double()
            model = (cam - T[:3, 3]) @ T[:3, :3]
            dist, _ = tree.query(model.numpy())
            assert np.quantile(dist, 0.95) < 0.004, (b, v, np.quantile(dist, 0.95))
            # and the model projects over the (visible) mask
            P = torch.from_numpy(pts).double() @ T[:3, :3].T + T[:3, 3]
            uv = torch.floor(P[:, :2] / P[:, 2:] * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2] + 0.5).long()
            ok = (uv >= 0).all(-1) & (uv < C).all(-1)
            proj = torch.zeros(C, C, dtype=torch.bool)
            proj[uv[ok, 1], uv[ok, 0]] = True
            proj = torch.nn.functional.max_pool2d(proj[None, None].float(), 7, 1, 3)[0, 0] > 0  # sample gaps
            assert proj[mask].float().mean() > 0.98, (b, v)


def test_d_ref_random_positive_and_eval_mode(tiny_set):
    ds = VPOGDataset(config(tiny_set, d_ref_random_ratio=1.0), train=False)
    for i in range(len(ds)):
        s = ds[i]
        _, dirs = ds.sources[0].template_poses(int(s["obj_id"]))
        others = dirs[s["template_ids"][1:3].numpy()]
        assert np.abs(others - s["d_ref"].numpy()).max(axis=1).min() < 1e-6, "d_ref: another positive's direction"
    # without training jitter or augmentation a sample is a pure function of its index
    a, b = ds[0], ds[0]
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["K"], b["K"])


def test_workers_and_determinism(tiny_set):
    cfg = config(tiny_set)
    loader = build_train_loader(cfg, num_workers=2, seed=5)
    loader.sampler.set_epoch(1)
    batches = list(loader)
    assert len(batches) == len(loader.dataset) // cfg.batch_size
    single = build_train_loader(cfg, num_workers=0, seed=5)
    single.sampler.set_epoch(1)
    for x, y in zip(batches, single):
        assert x.keys == y.keys and torch.equal(x.images, y.images) and torch.equal(x.template_ids, y.template_ids)
    # data-position resume: starting at sample 4 of the epoch gives the second batch first
    single.sampler.set_epoch(1, start=4)
    assert next(iter(single)).keys == batches[1].keys


def test_template_crops_cached_and_index_cached(tiny_set, monkeypatch):
    import vpog.data.shards as shards_mod
    import vpog.data.sources as sources_mod

    ds = VPOGDataset(config(tiny_set), train=False)
    calls = []
    real = sources_mod.read_view
    monkeypatch.setattr(sources_mod, "read_view", lambda *a: calls.append(a) or real(*a))
    ds[0]
    first = len(calls)
    assert first == 5
    ds[0]
    assert len(calls) == first, "template crops are reused after first use"
    # a second dataset reads the shard index from its cache: no shard is scanned again
    monkeypatch.setattr(shards_mod, "index_shard", lambda *a: pytest.fail("index was rebuilt"))
    assert len(VPOGDataset(config(tiny_set))) == len(ds)


def _rewrite(tar_path, edit):
    """Rewrite a shard with edit(key, members) -> members."""
    with tarfile.open(tar_path) as tar:
        samples = {}
        for m in tar.getmembers():
            key, _, ext = m.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    write_shard(tar_path, [(k, edit(k, dict(v))) for k, v in samples.items()])


def test_bad_data_is_skipped_and_counted(tiny_set, tmp_path):
    root = copy_set(tiny_set, tmp_path / "broken")
    shards = root / "train_pbr_web"

    def damage0(key, m):  # shard 0: bad JSON, zero depth, a missing member
        if key.endswith("0"):
            m["mask_visib.json"] = b'{"0": {"counts": [1, 2'
        elif key.endswith("1"):
            buf = io.BytesIO()
            Image.fromarray(np.zeros((96, 128), np.uint16)).save(buf, format="PNG")
            m["depth.png"] = buf.getvalue()
        else:
            del m["rgb.jpg"]
        return m

    def damage1(key, m):  # shard 1: empty visible masks in its first image
        if key.endswith("3"):
            m["mask_visib.json"] = json.dumps({str(i): mask_to_rle(np.zeros((96, 128))) for i in range(2)}).encode()
        return m

    _rewrite(shards / "shard-000000.tar", damage0)
    _rewrite(shards / "shard-000001.tar", damage1)
    # shard 1: garbage over the header of its last image's first member; shard 2: truncated
    with tarfile.open(shards / "shard-000001.tar") as tar:
        last = [m for m in tar.getmembers() if m.name.startswith("000000_000005")][0].offset
    with open(shards / "shard-000001.tar", "r+b") as fh:
        fh.seek(last)
        fh.write(b"\x13garbage" * 64)
    data = (shards / "shard-000002.tar").read_bytes()
    (shards / "shard-000002.tar").write_bytes(data[: int(len(data) * 0.6)])

    ds = VPOGDataset(config(root), train=True)
    stats = ds.index_stats["synthetic"]
    assert stats["missing_member"] == 1 and stats["corrupt_shard"] == 2 and stats["missing_key"] >= 2
    assert stats["bad_member"] == 1  # the cut mask_visib.json is caught by the index
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), collate_fn=collate_vpog)
    batch = next(iter(loader))
    assert len(batch) == len(ds) and batch.masks[:, 0].flatten(1).any(1).all()
    for reason in ("bad_depth", "empty_mask"):
        assert batch.skipped.get(reason, 0) >= 1, (reason, batch.skipped)
    assert sum(ds.skip_counts.values()) == sum(batch.skipped.values())


def test_template_depth_of_another_size_is_a_counted_bad_sample(tiny_set, tmp_path):
    root = copy_set(tiny_set, tmp_path / "tdepth")
    ds = VPOGDataset(config(root), train=True)
    src = ds.sources[0]
    obj = int(src.index.inst_obj[src.instances[0]])
    path = root / "templates" / "synthetic" / f"{obj:06d}" / "000000_depth.png"
    Image.fromarray(np.full((10, 12), 500, np.uint16)).save(path)
    from vpog.data.dataset import SampleError

    with pytest.raises(SampleError, match="depth") as info:
        ds._template(0, src, obj, 0)
    assert info.value.reason == "shape_mismatch"


def test_missing_inputs_give_clear_errors(tiny_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VPOGDataset(config(tmp_path / "nowhere"))
    root = copy_set(tiny_set, tmp_path / "a")
    (root / "key_to_shard.json").unlink()
    with pytest.raises(FileNotFoundError, match="key_to_shard.json"):
        VPOGDataset(config(root))
    root = copy_set(tiny_set, tmp_path / "b")
    (root / "models_info.json").unlink()
    (root / "models" / "models_info.json").unlink()
    with pytest.raises(FileNotFoundError, match="models_info.json"):
        VPOGDataset(config(root))
    root = copy_set(tiny_set, tmp_path / "c")
    (root / "templates" / "synthetic" / "object_poses" / "000002.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"obj_id 2.*object_poses"):
        VPOGDataset(config(root))
    skipping = VPOGDataset(config(root, missing_templates="skip"))
    assert skipping.index_stats["synthetic"]["no_templates"] > 0
    with pytest.raises(FileNotFoundError, match="templates folder"):
        VPOGDataset(config(root, name="other"))


def test_two_sets_mixed_by_ratio(tiny_set, tmp_path):
    root = copy_set(tiny_set, tmp_path / "second")
    (root / "templates" / "synthetic").rename(root / "templates" / "second")
    cfg = from_mapping(DataConfig, {
        "batch_size": 4, "samples_per_epoch": 40,
        "train_datasets": [
            {"name": "synthetic", "root": str(tiny_set), "templates": str(tiny_set / "templates"), "ratio": 3.0},
            {"name": "second", "root": str(root), "templates": str(root / "templates"), "ratio": 1.0}]}, "data")
    loader = build_train_loader(cfg, num_workers=0)
    ids = torch.cat([b.dataset_id for b in loader])
    assert len(ids) == 40 and int((ids == 0).sum()) == 30 and int((ids == 1).sum()) == 10


def test_loader_needs_no_render_stack(tiny_set, tiny_settings):
    """The GPU machine has torch, numpy and Pillow but no trimesh, pyrender, webdataset or omegaconf: the loader
    (and the first-use check of a pre-generated synthetic set) must not import them."""
    import subprocess
    import sys

    code = f"""
import sys
for name in ("trimesh", "pyrender", "webdataset", "OpenGL", "omegaconf", "hydra", "scipy"):
    sys.modules[name] = None
from vpog.data import build_train_loader, prepare_train_data
synth = {tiny_settings(tiny_set)!r}
cfg = {{"batch_size": 2, "synthesize": synth, "train_datasets": [
    {{"name": "synthetic", "root": {str(tiny_set)!r}, "templates": {str(tiny_set / "templates")!r}}}]}}
prepare_train_data(cfg)
batch = next(iter(build_train_loader(cfg, num_workers=0)))
assert batch.images.shape == (2, 7, 3, 224, 224), batch.images.shape
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_diameters_measured_on_templates_match_the_models(tiny_set, tmp_path):
    """Without models_info diameters, the templates' back-projected depth gives the BOP diameter (the
    synthesizer's own, computed on the mesh) to within 2% at this set's small template size."""
    from vpog.data.sources import TrainingSource

    src = TrainingSource("synthetic", tiny_set, tiny_set / "templates", index_cache_dir=tmp_path / "idx")
    for obj in src.objects:
        assert src.diameter_source(obj) == "models_info"
        measured, how = src.measure_diameter(obj)
        assert how == "templates"
        assert measured == pytest.approx(src.diameter(obj), rel=0.02)
