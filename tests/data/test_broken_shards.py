"""Broken shards found at indexing: tar damage, images lost, members that would not decode (no rendering).

Shards are made two ways: with vpog's own writer (`encode_image` + `write_shard`) and, independently, with
Python's `tarfile` and members built here by hand (PIL images, JSON written out).
"""

from __future__ import annotations

import io
import json
import logging
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

import vpog.data.shards as shards_mod
from vpog.data.bop_writer import ImageRecord, InstanceRecord, encode_image, write_key_to_shard, write_shard
from vpog.data.shards import INDEX_VERSION, ShardIndex, index_shard

H, W = 12, 16
LOGGER = "vpog.data.shards"


# ------------------------------------------------------------------ members, two independent ways


def writer_members(seed: int, n_inst: int = 2) -> dict[str, bytes]:
    """Members of one image through vpog's writer."""
    rng = np.random.default_rng(seed)
    K = np.array([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]])
    instances = []
    for i in range(n_inst):
        mask = np.zeros((H, W), bool)
        mask[2 + i: 8 + i, 3 + 2 * i: 10 + 2 * i] = True
        T = np.eye(4)
        T[2, 3] = 0.5 + 0.1 * i
        instances.append(InstanceRecord(1 + i, T, mask, mask, [3, 2, 7, 6]))
    rgb = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    depth = np.full((H, W), 0.5, np.float32)
    return encode_image(ImageRecord(f"{seed}", rgb, depth, K, instances))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def raw_members(n_inst: int = 1, depth_bits: int = 16) -> dict[str, bytes]:
    """Members of one image built by hand (PIL + json), not through vpog."""
    buf = io.BytesIO()
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(buf, format="JPEG")
    depth = np.full((H, W), 5000, np.uint16) if depth_bits == 16 else np.full((H, W), 50, np.uint8)
    gt = [{"obj_id": 3, "cam_R_m2c": np.eye(3).ravel().tolist(), "cam_t_m2c": [0, 0, 500.0]}] * n_inst
    info = [{"bbox_obj": [1, 1, 4, 4], "bbox_visib": [1, 1, 4, 4], "px_count_all": 16, "px_count_valid": 16,
             "px_count_visib": 16, "visib_fract": 0.9}] * n_inst
    rle = {"counts": [17, 4, 8, 4, 8, 4, 8, 4, 135], "size": [H, W]}
    return {"rgb.jpg": buf.getvalue(), "depth.png": _png(depth),
            "camera.json": json.dumps({"cam_K": [20, 0, 8, 0, 20, 6, 0, 0, 1], "depth_scale": 0.1}).encode(),
            "gt.json": json.dumps(gt).encode(), "gt_info.json": json.dumps(info).encode(),
            "mask_visib.json": json.dumps({str(i): rle for i in range(n_inst)}).encode()}


def tar_bytes(samples: list[tuple[str, dict[str, bytes]]]) -> bytes:
    """A tar written with the standard library alone (GNU format, unlike vpog's USTAR writer)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def key(shard: int, i: int) -> str:
    return f"{shard:06d}_{i:06d}"


# ------------------------------------------------------------------ the set


@pytest.fixture
def broken_set(tmp_path):
    """Shards 0..8 (7 on disk; 4 and 9 named by key_to_shard.json only) -> (root, expected outcome)."""
    root = tmp_path / "set"
    d = root / "train_pbr_web"
    d.mkdir(parents=True)
    k2s: dict[str, int] = {}

    def put(shard: int, data: bytes | None, n: int):
        k2s.update({key(shard, i): shard for i in range(n)})
        if data is not None:
            (d / f"shard-{shard:06d}.tar").write_bytes(data)

    # 0: good, vpog's writer
    write_shard(d / "shard-000000.tar", [(key(0, i), writer_members(i)) for i in range(2)])
    k2s.update({key(0, i): 0 for i in range(2)})
    # 1: good, tarfile
    put(1, tar_bytes([(key(1, i), raw_members(2)) for i in range(2)]), 2)
    # 2: a ~1 KB cut of a good shard (MegaPose-GSO's broken shards are such files)
    full = tar_bytes([(key(2, i), raw_members()) for i in range(3)])
    put(2, full[:1100], 3)
    # 3: an empty but valid tar while key_to_shard.json names 2 images in it
    put(3, tar_bytes([]), 2)
    # 4: named by key_to_shard.json, absent on disk
    put(4, None, 2)
    # 5: rgb of image 0 is garbage bytes (the other 2 images are fine: 1 of 3 dropped, not broken)
    samples = [(key(5, i), raw_members()) for i in range(3)]
    samples[0][1]["rgb.jpg"] = b"\x13garbage" * 40
    put(5, tar_bytes(samples), 3)
    # 6: every depth.png is 8-bit (vpog's writer; nothing survives)
    samples = [(key(6, i), writer_members(10 + i)) for i in range(2)]
    for _, m in samples:
        m["depth.png"] = _png(np.full((H, W), 7, np.uint8))
    write_shard(d / "shard-000006.tar", samples)
    k2s.update({key(6, i): 6 for i in range(2)})
    # 7: mask_visib lacks instance 1 in 2 of 3 images (more than half dropped)
    samples = [(key(7, i), raw_members(2)) for i in range(3)]
    for _, m in samples[:2]:
        masks = json.loads(m["mask_visib.json"])
        del masks["1"]
        m["mask_visib.json"] = json.dumps(masks).encode()
    put(7, tar_bytes(samples), 3)
    # 8: 4 good images, cut inside the third: a truncated shard whose first 2 images are still used
    full = tar_bytes([(key(8, i), raw_members()) for i in range(4)])
    cut = full.index(f"{key(8, 2)}.depth.png".encode()) + 700
    put(8, full[:cut], 4)
    # 9: named only
    put(9, None, 1)
    write_key_to_shard(root, k2s)
    kept = [key(0, 0), key(0, 1), key(1, 0), key(1, 1), key(5, 1), key(5, 2), key(7, 2), key(8, 0), key(8, 1)]
    broken = [("shard-000002.tar", "truncated"), ("shard-000003.tar", "no_images"),
              ("shard-000004.tar", "missing"), ("shard-000006.tar", "no_images"),
              ("shard-000007.tar", "most_images_dropped"), ("shard-000008.tar", "truncated"),
              ("shard-000009.tar", "missing")]
    return root, kept, broken


def _keys(index: ShardIndex) -> list[str]:
    return [index.key(i) for i in range(index.num_images)]


def test_broken_shards_are_named_and_bad_members_dropped(broken_set, caplog):
    root, kept, broken = broken_set
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        index = ShardIndex(root, check_members=True)
    assert _keys(index) == kept
    assert index.broken_shards == broken
    stats = index.stats.as_dict()
    # 1 garbage rgb + 2 eight-bit depths + 2 incomplete mask_visib
    assert stats["bad_member"] == 5 and stats["broken_shards"] == len(broken)
    assert stats["missing_shard"] == 2 and stats["corrupt_shard"] == 2 and stats["images"] == len(kept)
    # absent: shards 4 and 9 (2 + 1), all of empty 3 and of the 1 KB shard 2 (its first member is cut), the
    # last image of 8; the image of 8 cut through has some members only
    assert stats["missing_key"] == 2 + 1 + 2 + 3 + 1 and stats["missing_member"] == 1
    assert stats["truncated_member"] == 1 and "bad_json" not in stats
    # the images kept are readable where the index says
    for i in range(index.num_images):
        assert index.read(i, "rgb")[:3] == b"\xff\xd8\xff"
        assert index.read(i, "depth")[:8] == b"\x89PNG\r\n\x1a\n"
    # one warning, naming every broken shard with its reason
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    for name, reason in broken:
        assert f"{name} ({reason}" in text
    assert "shard-000005.tar" not in text and "shard-000000.tar" not in text
    index.close()


def test_index_from_cache_gives_the_same_result(broken_set, monkeypatch, caplog):
    root, kept, broken = broken_set
    first = ShardIndex(root, check_members=True)
    cache = root / ".vpog_index" / "train_pbr_web"
    with np.load(cache / "shard-000007.npz") as npz:
        assert str(npz["broken"]) == "most_images_dropped" and str(npz["shard_name"]) == "shard-000007.tar"
        assert int(npz["expected_images"]) == 3 and int(npz["version"]) == INDEX_VERSION
    with np.load(cache / "shard-000001.npz") as npz:
        assert str(npz["broken"]) == "" and bool(npz["check_members"])
    monkeypatch.setattr(shards_mod, "index_shard", lambda *a: pytest.fail("index was rebuilt"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = ShardIndex(root, check_members=True)
    assert _keys(again) == _keys(first) == kept and again.broken_shards == broken
    assert again.stats.as_dict() == first.stats.as_dict()
    assert np.array_equal(again.offsets, first.offsets) and np.array_equal(again.inst_obj, first.inst_obj)
    assert "shard-000002.tar (truncated" in caplog.text
    first.close()
    again.close()


def test_cache_of_other_settings_or_version_is_rebuilt(broken_set, monkeypatch):
    root, kept, _ = broken_set
    lenient = ShardIndex(root, check_members=False)
    calls = []
    real = shards_mod.index_shard
    monkeypatch.setattr(shards_mod, "index_shard", lambda *a: calls.append(a[0]) or real(*a))
    strict = ShardIndex(root, check_members=True)
    assert len(calls) == 8 and _keys(strict) == kept  # every shard on disk indexed again, now checked
    # a cache written by an older index version is rebuilt
    npz_path = root / ".vpog_index" / "train_pbr_web" / "shard-000001.npz"
    with np.load(npz_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["version"] = np.array(INDEX_VERSION - 1)
    np.savez(npz_path, **arrays)
    calls.clear()
    ShardIndex(root, check_members=True).close()
    assert [c.name for c in calls] == ["shard-000001.tar"]
    lenient.close()
    strict.close()


def test_without_member_checks_tar_damage_is_still_reported(broken_set):
    root, _, _ = broken_set
    assert ShardIndex(root).check_members is shards_mod.CHECK_MEMBERS_DEFAULT
    index = ShardIndex(root, check_members=False)  # members are then judged by the loader only
    assert index.broken_shards == [("shard-000002.tar", "truncated"), ("shard-000003.tar", "no_images"),
                                   ("shard-000004.tar", "missing"), ("shard-000008.tar", "truncated"),
                                   ("shard-000009.tar", "missing")]
    stats = index.stats.as_dict()
    assert stats["broken_shards"] == 5 and "bad_member" not in stats
    assert key(5, 0) in _keys(index) and key(6, 0) in _keys(index)
    index.close()


def test_stats_dict_always_has_broken_shards(tmp_path):
    root = tmp_path / "ok"
    write_shard(root / "train_pbr_web" / "shard-000000.tar", [(key(0, 0), writer_members(0))])
    write_key_to_shard(root, {key(0, 0): 0})
    index = ShardIndex(root, check_members=True)
    assert index.broken_shards == [] and index.stats.as_dict() == {"broken_shards": 0, "images": 1, "instances": 2}
    index.close()


def test_many_broken_shards_are_listed_in_one_line(tmp_path, caplog):
    root = tmp_path / "many"
    (root / "train_pbr_web").mkdir(parents=True)
    write_key_to_shard(root, {key(s, 0): s for s in range(25)})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        index = ShardIndex(root)
    assert len(index.broken_shards) == 25 and all(r == "missing" for _, r in index.broken_shards)
    (record,) = [r for r in caplog.records if r.name == LOGGER]
    text = record.getMessage()
    assert "shard-000019.tar (missing" in text and "shard-000020.tar" not in text and "... and 5 more" in text


# ------------------------------------------------------------------ one member at a time


def _ihdr(width: int, height: int, bits: int, colour: int, crc_delta: int = 0) -> bytes:
    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    return struct.pack(">I", 13) + body + struct.pack(">I", (zlib.crc32(body) + crc_delta) & 0xFFFFFFFF)


def _depth_with(ihdr: bytes) -> bytes:
    good = _png(np.full((H, W), 5000, np.uint16))
    return good[:8] + ihdr + good[33:]


BAD_MEMBERS = {
    "rgb_signature_only": ("rgb.jpg", b"\xff\xd8\xff"),
    "rgb_empty": ("rgb.jpg", b""),
    "depth_not_png": ("depth.png", b"\xff\xd8\xff" + b"\0" * 100),
    "depth_8bit": ("depth.png", _depth_with(_ihdr(W, H, 8, 0))),
    "depth_16bit_rgb": ("depth.png", _depth_with(_ihdr(W, H, 16, 2))),
    "depth_zero_width": ("depth.png", _depth_with(_ihdr(0, H, 16, 0))),
    "depth_bad_crc": ("depth.png", _depth_with(_ihdr(W, H, 16, 0, crc_delta=1))),
    "depth_cut": ("depth.png", _png(np.full((H, W), 5000, np.uint16))[:40]),
    "camera_not_json": ("camera.json", b'{"cam_K": [1, 2'),
    "camera_short_K": ("camera.json", json.dumps({"cam_K": [1] * 8}).encode()),
    "camera_no_K": ("camera.json", b"{}"),
    "camera_nan_K": ("camera.json", b'{"cam_K": [1, 0, 0, 0, 1, 0, 0, 0, NaN]}'),
    "mask_list": ("mask_visib.json", b"[]"),
    "mask_no_size": ("mask_visib.json", json.dumps({"0": {"counts": [192]}}).encode()),
    "mask_not_json": ("mask_visib.json", b'{"0": {"counts": [1, 2'),
}


@pytest.mark.parametrize("case", sorted(BAD_MEMBERS))
def test_each_failed_member_check_drops_the_image(tmp_path, case):
    ext, data = BAD_MEMBERS[case]
    bad = raw_members()
    bad[ext] = data
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(tar_bytes([("a", raw_members()), ("b", bad), ("c", raw_members())]))
    arrays = index_shard(path, ["a", "b", "c"], True)
    assert arrays["keys"].tolist() == [b"a", b"c"] and str(arrays["broken"]) == ""
    stats = json.loads(str(arrays["stats_json"]))
    assert stats["bad_member"] == 1 and "bad_json" not in stats
    lenient = index_shard(path, ["a", "b", "c"], False)  # without the checks the image stays for the loader
    assert lenient["keys"].tolist() == [b"a", b"b", b"c"]


def test_good_members_of_either_kind_pass(tmp_path):
    png_rgb = raw_members()
    del png_rgb["rgb.jpg"]
    png_rgb["rgb.png"] = _png(np.full((H, W, 3), 9, np.uint8))
    nested_K = raw_members()
    nested_K["camera.json"] = json.dumps({"cam_K": [[20, 0, 8], [0, 20, 6], [0, 0, 1]]}).encode()
    path = tmp_path / "shard-000000.tar"
    path.write_bytes(tar_bytes([("a", png_rgb), ("b", nested_K), ("c", writer_members(3))]))
    arrays = index_shard(path, None, True)
    assert arrays["keys"].tolist() == [b"a", b"b", b"c"] and str(arrays["broken"]) == ""
    assert int(arrays["expected_images"]) == 3
