"""Unit tests of the data building blocks (no rendering): RLE, crops, augmentation, sampler, shard index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vpog.config_schema import from_mapping
from vpog.data import DataConfig, MixedSampler
from vpog.data.augment import AugmentConfig, augment_rgb
from vpog.data.bop_writer import write_shard
from vpog.data.crop import box_from_mask, box_from_xywh, crop_matrix, warp_crop
from vpog.data.rle import mask_to_rle, rle_area, rle_to_mask
from vpog.data.shards import ShardIndex


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools with numpy 2
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (31, 17), (96, 128)])
def test_rle_round_trip_and_pycocotools(shape):
    mask_util = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.3, 1.0):
        mask = rng.random(shape) < density
        rle = mask_to_rle(mask)
        assert sum(rle["counts"]) == mask.size and rle["size"] == list(shape)
        assert np.array_equal(rle_to_mask(rle), mask) and rle_area(rle) == mask.sum()
        ref = mask_util.frPyObjects(rle, *shape)
        assert np.array_equal(mask_util.decode(ref).astype(bool), mask)
        # COCO's compressed string form decodes to the same mask
        compressed = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert np.array_equal(rle_to_mask({"counts": compressed["counts"].decode(), "size": list(shape)}), mask)


def test_rle_is_column_major_with_leading_zeros():
    mask = np.array([[0, 1], [0, 1], [1, 0]], dtype=bool)  # Fortran order: 0 0 1 1 1 0
    assert mask_to_rle(mask)["counts"] == [2, 3, 1]
    assert mask_to_rle(np.ones((2, 2)))["counts"] == [0, 4]


def test_rle_rejects_bad_input():
    with pytest.raises(ValueError, match="sums to"):
        rle_to_mask({"counts": [1, 2], "size": [2, 2]})
    with pytest.raises(ValueError, match="negative"):
        rle_to_mask({"counts": [5, -1], "size": [2, 2]})
    with pytest.raises(ValueError, match="counts"):
        rle_to_mask([1, 2])
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        mask_to_rle(np.zeros(4))
    # malformed JSON types: a ValueError (counted as a bad sample by the loader), never a TypeError
    for bad in ({"counts": [1, 2], "size": 5}, {"counts": None, "size": [1, 3]},
                {"counts": {"a": 1}, "size": [1, 3]}, {"counts": [[1, 2]], "size": [1, 3]}):
        with pytest.raises(ValueError, match=r"rle\['(size|counts)'\]"):
            rle_to_mask(bad)


def test_crop_matrix_maps_box_edges_to_crop_edges():
    # box of pixels x 10..29, y 5..24 (w = h = 20): its outer edges are 9.5 and 29.5
    box = box_from_xywh([10, 5, 20, 20])
    assert box == (19.5, 14.5, 20.0)
    M = crop_matrix(box, 224)
    corners = M @ np.array([[9.5, 29.5], [4.5, 24.5], [1, 1]])
    np.testing.assert_allclose(corners[:2], [[-0.5, 223.5], [-0.5, 223.5]])
    mask = np.zeros((40, 40), bool)
    mask[5:25, 10:30] = True
    assert box_from_mask(mask) == box
    with pytest.raises(ValueError, match="positive"):
        box_from_xywh([1, 1, 0, 3])
    with pytest.raises(ValueError, match="empty"):
        box_from_mask(np.zeros((4, 4), bool))


def test_k_crop_moves_projections_with_the_image():
    """A 3D point projects with K_crop = M K where the crop shows the pixel it projects to with K."""
    K = np.array([[572.4, 0, 320.0], [0, 573.6, 240.0], [0, 0, 1]])
    M = crop_matrix((300.2, 211.7, 137.0), 224)
    X = np.array([0.03, -0.02, 0.6])
    uv = K @ X
    uv_crop = (M @ K) @ X
    np.testing.assert_allclose(uv_crop[:2] / uv_crop[2], (M @ (uv / uv[2]))[:2])
    # and the crop's pixel there holds the image's pixel value (nearest)
    img = np.arange(480 * 640, dtype=np.float64).reshape(480, 640)
    crop = warp_crop(img, M, 224, "nearest")
    c = np.floor(uv_crop[:2] / uv_crop[2] + 0.5).astype(int)
    src = np.linalg.inv(M) @ np.array([c[0], c[1], 1.0])
    assert crop[c[1], c[0]] == img[int(np.floor(src[1] + 0.5)), int(np.floor(src[0] + 0.5))]


@pytest.mark.parametrize("box", [(20.3, 15.7, 30.0), (5.0, 5.0, 60.0), (50.0, 30.0, 9.0), (-40.0, -40.0, 20.0)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_warp_crop_matches_grid_sample(box, mode):
    rng = np.random.default_rng(0)
    img = rng.random((37, 53, 3)).astype(np.float32)
    M = crop_matrix(box, 24)
    out = warp_crop(img, M, 24, mode)
    c = torch.arange(24, dtype=torch.float64)
    u, v = (c - M[0, 2]) / M[0, 0], (c - M[1, 2]) / M[1, 1]
    grid = torch.stack(torch.meshgrid(((v + 0.5) / 37 * 2 - 1).float(), ((u + 0.5) / 53 * 2 - 1).float(),
                                      indexing="ij")[::-1], dim=-1)[None]
    ref = torch.nn.functional.grid_sample(torch.from_numpy(img).permute(2, 0, 1)[None], grid, mode=mode,
                                          padding_mode="zeros", align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)  # float32 interpolation weights
    assert warp_crop(img[..., 0], M, 24, mode).shape == (24, 24)


def test_augment_is_seeded_bounded_and_optional():
    rng = np.random.default_rng(0)
    img = rng.random((32, 32, 3)).astype(np.float32)
    cfg = AugmentConfig(prob=1.0, grayscale_prob=0.0)
    a = augment_rgb(img, np.random.default_rng(7), cfg)
    b = augment_rgb(img, np.random.default_rng(7), cfg)
    assert np.array_equal(a, b) and a.dtype == np.float32 and a.shape == img.shape
    assert a.min() >= 0 and a.max() <= 1 and not np.allclose(a, img)
    assert augment_rgb(img, rng, AugmentConfig(enabled=False)) is img
    gray = augment_rgb(img, rng, AugmentConfig(prob=0.0, grayscale_prob=1.0))
    assert np.allclose(gray[..., 0], gray[..., 1])
    with pytest.raises(ValueError, match="augment.brightness"):
        AugmentConfig(brightness=1.5)


def test_sampler_ranks_are_disjoint_and_reshuffled():
    sizes, ratios = [23, 7], [1.0, 1.0]
    samplers = [MixedSampler(sizes, ratios, rank=r, world_size=3, seed=1) for r in range(3)]
    lists = [list(s) for s in samplers]
    assert all(len(x) == len(s) == 10 for x, s in zip(lists, samplers))  # 30 samples over 3 ranks
    positions = [set(range(r, 30, 3)) for r in range(3)]
    assert set.union(*positions) == set(range(30)) and not positions[0] & positions[1]
    full, seeds = samplers[0].epoch_list(0)
    for r in range(3):
        assert [i for i, _ in lists[r]] == full[r::3].tolist() and [s for _, s in lists[r]] == seeds[r::3].tolist()
    # ratio 1:1 over 30 samples: 15 from each set, the 7-instance set cycled through whole permutations
    assert (full < 23).sum() == 15 and sorted(np.bincount(full[full >= 23] - 23)) == [2] * 6 + [3]
    for s in samplers:
        s.set_epoch(1)
    assert [list(s) for s in samplers] != lists
    samplers[0].set_epoch(0, start=4)
    assert list(samplers[0]) == lists[0][4:] and len(samplers[0]) == 6
    with pytest.raises(ValueError, match="rank"):
        MixedSampler(sizes, ratios, rank=3, world_size=3)


def _sample_members(i: int) -> dict[str, bytes]:
    gt = [{"obj_id": 1, "cam_R_m2c": np.eye(3).ravel().tolist(), "cam_t_m2c": [0, 0, 500.0]}]
    info = [{"bbox_obj": [1, 1, 3, 3], "bbox_visib": [1, 1, 3, 3], "px_count_all": 9, "px_count_valid": 9,
             "px_count_visib": 9, "visib_fract": 0.1 + 0.2 * i}]
    return {"camera.json": b"{}", "depth.png": b"png", "gt.json": json.dumps(gt).encode(),
            "gt_info.json": json.dumps(info).encode(), "mask_visib.json": b"{}", "rgb.jpg": b"jpg" * (i + 1)}


def test_shard_index_random_access_and_cache(tmp_path):
    root = tmp_path / "set"
    keys = [f"000000_{i:06d}" for i in range(5)]
    write_shard(root / "train_pbr_web" / "shard-000000.tar", [(k, _sample_members(i)) for i, k in enumerate(keys[:3])])
    write_shard(root / "train_pbr_web" / "shard-000001.tar", [(k, _sample_members(i)) for i, k in enumerate(keys[3:])])
    (root / "key_to_shard.json").write_text(json.dumps({**{k: 0 for k in keys[:3]}, **{k: 1 for k in keys[3:]},
                                                        "000000_000009": 2}))
    index = ShardIndex(root, check_members=False)  # the members above are stand-ins
    assert [index.key(i) for i in range(index.num_images)] == keys
    assert index.read(4, "rgb") == b"jpg" * 2 and index.read(0, "gt_info").startswith(b"[")
    np.testing.assert_allclose(index.inst_visib, [0.1, 0.3, 0.5, 0.1, 0.3], atol=1e-6)
    assert index.stats.as_dict()["missing_shard"] == 1 and index.stats.as_dict()["missing_key"] == 1
    assert sorted(p.name for p in (root / ".vpog_index" / "train_pbr_web").glob("*.npz")) == [
        "shard-000000.npz", "shard-000001.npz"]
    # a rewritten shard is indexed again (size/mtime changed); the other comes from the cache
    write_shard(root / "train_pbr_web" / "shard-000001.tar", [(k, _sample_members(4)) for k in keys[3:]])
    again = ShardIndex(root, check_members=False)
    assert again.read(4, "rgb") == b"jpg" * 5
    import pickle

    clone = pickle.loads(pickle.dumps(again))  # what a DataLoader worker gets: no shared descriptors
    assert clone.read(0, "rgb") == b"jpg"
    # indexing in worker processes gives the same index
    parallel = ShardIndex(root, cache_dir=tmp_path / "cache2", num_workers=2, check_members=False)
    assert np.array_equal(parallel.offsets, again.offsets) and np.array_equal(parallel.inst_visib, again.inst_visib)


def test_data_configs_compose():
    from vpog.cli import load_config

    for name in ("synthetic", "gso", "shapenet", "gso_shapenet"):
        cfg = from_mapping(DataConfig, load_config("train", [f"data={name}"]).data, "data")
        assert cfg.num_positive_templates == 4 and cfg.train_datasets
    mixed = from_mapping(DataConfig, load_config("train", ["data=gso_shapenet", "data.data_root=/x"]).data, "data")
    assert [d.root for d in mixed.train_datasets] == ["/x/gso", "/x/shapenet"]
    assert [d.templates for d in mixed.train_datasets] == ["/x/templates", "/x/templates"]
    synth = load_config("train", []).data
    assert synth.train_datasets[0].root == synth.synthesize.out
    # the data config's synthesize block is the CLI's default config: `python -m vpog.data.synthesize` makes
    # the built-in set
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(synth.synthesize) == OmegaConf.to_container(load_config("synthesize", []))
    with pytest.raises(ValueError, match="unknown config key 'data.bogus'"):
        from_mapping(DataConfig, {"batch_size": 2, "bogus": 1, "train_datasets": []}, "data")
