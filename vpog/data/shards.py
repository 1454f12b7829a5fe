"""Random access into BOP-webdataset shards through a cached index (stdlib tarfile + numpy only).

Reading `train_pbr_web` the webdataset way streams every shard each epoch; the loader needs random access
to one instance of one image. So each shard is scanned once: tar member offsets and sizes, and the
per-instance `gt_info.json` fields (object id, visible fraction, visible box). The result is cached as one
`.npz` per shard (rebuilt when the tar's size or mtime changes; concurrent ranks lock per shard), and a
sample is then a few `os.pread` calls at known offsets: no tar parsing, no full scan per epoch.

Broken input never stops the scan: a truncated or corrupt tar keeps the members read before the damage,
a missing member or bad JSON drops that image, and everything dropped is counted in `IndexStats`.

Member checks (`check_members`, on by default: `CHECK_MEMBERS_DEFAULT`): every required member of
an image is checked cheaply at indexing, without decoding an image: `rgb` starts with the JPEG or PNG
signature and is longer than it; `depth.png` is a PNG whose IHDR (first 33 bytes, CRC checked) says
16-bit greyscale (colour type 0) of nonzero size; `camera.json` is a JSON object with a 9-number `cam_K`
(and a finite `depth_scale` where present); `mask_visib.json` is a JSON object with a `{"counts", "size"}`
entry for every instance index `str(i)` of gt.json. An image failing any check is dropped and counted as
`bad_member` (`bad_json` keeps its meaning: gt.json / gt_info.json unusable).

Broken shards: a shard is broken when its tar is unreadable or damaged (counted as `corrupt_shard` as
before), when none of the images key_to_shard.json puts in it survived, or when more than half of them
were dropped; a shard key_to_shard.json names that does not exist is broken too. `ShardIndex.broken_shards`
lists them as (file name, reason), reasons `missing`, `unreadable`, `truncated`, `damaged` (tar level),
`no_images`, `most_images_dropped` (image level); the per-shard cache records the reason (`broken`), and
one warning at the end of indexing names them. No shard id is special-cased (MegaPose-GSO's ~1 KB shards
101, 102, 108, 114 and 701 are found as unreadable/truncated like any other). Choice: the images of a
broken shard that passed every check are still used (a damaged tar keeps the members before the damage,
read back at verified offsets); a broken shard only loses what is actually unusable.

Layout read (docs/conventions.md §2): `ROOT/train_pbr_web/shard-%06d.tar`, `ROOT/key_to_shard.json` (or
`ROOT/train_pbr_web/key_to_shard.json`, where bop_toolkit's converter writes it).

References: GigaPose/MegaPose `web_scene_dataset.py` (key_to_shard frame index, tarfile random access).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tarfile
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

INDEX_VERSION = 3  # 3: per-shard `broken` reason, `expected_images`, `check_members`; `bad_member` drops
CHECK_MEMBERS_DEFAULT = True  # ShardIndex / index_shard check every required member (see module doc)
# Member slots kept per image; the first extension present wins.
SLOTS: dict[str, tuple[str, ...]] = {
    "rgb": ("rgb.jpg", "rgb.png"),
    "depth": ("depth.png",),
    "camera": ("camera.json",),
    "gt": ("gt.json",),
    "gt_info": ("gt_info.json",),
    "mask_visib": ("mask_visib.json",),
    "mask": ("mask.json",),
}
SLOT_NAMES = tuple(SLOTS)
SLOT = {name: i for i, name in enumerate(SLOT_NAMES)}
REQUIRED_SLOTS = ("rgb", "depth", "camera", "gt", "gt_info", "mask_visib")
JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Shard-level reasons of `ShardIndex.broken_shards`.
BROKEN_REASONS = ("missing", "unreadable", "truncated", "damaged", "no_images", "most_images_dropped")
WARN_MAX_NAMES = 20


class ShardReadError(IOError):
    """A member could not be read back (missing, truncated, or the shard changed since indexing)."""


@dataclass
class IndexStats:
    """What the index scan dropped, summed over shards. `as_dict()` is what training logs.

    `counts`: images, instances and drop counters (corrupt_shard, truncated_member, missing_shard,
    missing_key, missing_member, bad_json, bad_member); `broken`: (shard file name, reason) per broken
    shard, reported by `as_dict()` as the count `broken_shards` (always present, 0 when none).
    """

    counts: Counter = field(default_factory=Counter)
    broken: list[tuple[str, str]] = field(default_factory=list)

    def add(self, other: dict) -> None:
        self.counts.update({k: int(v) for k, v in other.items()})

    def as_dict(self) -> dict[str, int]:
        out = {k: int(v) for k, v in self.counts.items()}
        out["broken_shards"] = len(self.broken)
        return dict(sorted(out.items()))


def find_key_to_shard(root: Path, split: str) -> Path:
    """Path of key_to_shard.json under `root` (ROOT/ first, then ROOT/<split>/); FileNotFoundError if absent."""
    for cand in (root / "key_to_shard.json", root / split / "key_to_shard.json"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(
        f"training set root {root} has no key_to_shard.json (looked for {root / 'key_to_shard.json'} and "
        f"{root / split / 'key_to_shard.json'}); a BOP-webdataset root holds it next to {split}/"
    )


def default_cache_dir(root: Path, split: str) -> Path:
    """ROOT/.vpog_index/<split> when ROOT is writable, else ~/.cache/vpog/index/<hash of ROOT>/<split>."""
    if os.access(root, os.W_OK):
        return root / ".vpog_index" / split
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "vpog" / "index" / digest / split


# --------------------------------------------------------------------------------------------
# Scanning one shard


def _scan_members(path: Path, file_size: int, stats: Counter) -> tuple[dict[str, tuple[int, int]], str]:
    """Tar member name -> (data offset, size), and the tar-level damage ("" when sound, else `unreadable`,
    `truncated` or `damaged`). Stops at the first damage and counts it (one `corrupt_shard`)."""
    members: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as fh:
        try:
            tar = tarfile.open(fileobj=fh, mode="r:")
        except (tarfile.TarError, OSError, EOFError) as exc:
            logger.info("shard %s is unreadable (%s); skipping it", path, exc)
            stats["corrupt_shard"] += 1
            return members, "unreadable"
        try:
            while True:
                info = tar.next()
                if info is None:
                    break
                if not info.isfile():
                    continue
                if info.offset_data + info.size > file_size:
                    stats["truncated_member"] += 1
                    stats["corrupt_shard"] += 1
                    logger.info("shard %s is truncated at member %s", path, info.name)
                    return members, "truncated"
                members[info.name] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError) as exc:
            # the file ends before the next header ("unexpected end of data"), or a header is invalid
            reason = "truncated" if tar.offset + tarfile.BLOCKSIZE > file_size else "damaged"
            logger.info("shard %s is %s after %d members (%s)", path, reason, len(members), exc)
            stats["corrupt_shard"] += 1
            return members, reason
        # tarfile stops silently at a bad header that is not the first, and at a file cut between members:
        # a sound tar ends with two zero blocks where the member list ends.
        end = tar.offset
        fh.seek(end)
        tail = fh.read(1024)
        if len(tail) < 1024 or tail.strip(b"\0"):
            cut = not tail.strip(b"\0") or end + tarfile.BLOCKSIZE > file_size  # no room for a whole header
            reason = "truncated" if cut else "damaged"
            what = "is truncated" if reason == "truncated" else "has an invalid tar header"
            logger.info("shard %s %s at byte %d; members after it are lost", path, what, end)
            stats["corrupt_shard"] += 1
            return members, reason
    return members, ""


def _parse_json(fh, offset: int, size: int):
    return json.loads(os.pread(fh.fileno(), size, offset))


def _float_list(value, n: int) -> list[float]:
    out = [float(x) for x in value]
    if len(out) != n or not all(np.isfinite(out)):
        raise ValueError(f"expected {n} finite numbers")
    return out


def _check_rgb(fd: int, offset: int, size: int) -> None:
    head = os.pread(fd, min(size, len(PNG_SIGNATURE)), offset)
    for sig in (JPEG_SIGNATURE, PNG_SIGNATURE):
        if head.startswith(sig):
            if size <= len(sig):
                raise ValueError(f"rgb is only its {len(sig)}-byte signature")
            return
    raise ValueError(f"rgb is neither JPEG nor PNG (starts with {head[:4].hex()})")


def _check_depth(fd: int, offset: int, size: int) -> None:
    """PNG signature, then an IHDR chunk (length 13, CRC checked) of nonzero size, 16-bit greyscale."""
    if size < 57:  # signature + IHDR + the smallest IDAT and IEND chunks
        raise ValueError(f"depth.png has {size} bytes, too few for a PNG")
    head = os.pread(fd, 33, offset)
    if len(head) != 33 or not head.startswith(PNG_SIGNATURE):
        raise ValueError("depth.png has no PNG signature")
    length, ctype = struct.unpack(">I4s", head[8:16])
    if length != 13 or ctype != b"IHDR" or zlib.crc32(head[12:29]) != struct.unpack(">I", head[29:33])[0]:
        raise ValueError("depth.png has no valid IHDR chunk")
    width, height, bit_depth, colour = struct.unpack(">IIBB", head[16:26])
    if width == 0 or height == 0 or bit_depth != 16 or colour != 0:
        raise ValueError(f"depth.png is {width}x{height}, {bit_depth}-bit, colour type {colour}; "
                         f"expected 16-bit greyscale (colour type 0)")


def _check_camera(fh, offset: int, size: int) -> None:
    camera = _parse_json(fh, offset, size)
    if not isinstance(camera, dict):
        raise ValueError("camera.json is not a JSON object")
    K = np.asarray(camera["cam_K"], dtype=np.float64)
    if K.size != 9 or not np.isfinite(K).all():
        raise ValueError("camera.json cam_K is not 9 finite numbers")
    if "depth_scale" in camera and not np.isfinite(float(camera["depth_scale"])):
        raise ValueError("camera.json depth_scale is not finite")


def _check_mask_visib(fh, offset: int, size: int, n_instances: int) -> None:
    masks = _parse_json(fh, offset, size)
    if not isinstance(masks, dict):
        raise ValueError("mask_visib.json is not a JSON object")
    for i in range(n_instances):
        rle = masks[str(i)]
        if not isinstance(rle, dict) or "counts" not in rle or len(rle["size"]) != 2:
            raise ValueError(f"mask_visib.json entry {i} is not an RLE {{counts, size}}")


def _member_problem(fh, off: np.ndarray, size: np.ndarray, n_instances: int) -> str | None:
    """None when every required member passes its cheap check (see module doc), else what failed."""
    fd = fh.fileno()
    checks = (("rgb", lambda o, n: _check_rgb(fd, o, n)), ("depth", lambda o, n: _check_depth(fd, o, n)),
              ("camera", lambda o, n: _check_camera(fh, o, n)),
              ("mask_visib", lambda o, n: _check_mask_visib(fh, o, n, n_instances)))
    for slot, check in checks:
        try:
            check(int(off[SLOT[slot]]), int(size[SLOT[slot]]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError, struct.error) as exc:
            return f"{slot}: {type(exc).__name__}: {exc}"
    return None


def _shard_verdict(tar_damage: str, expected: int, kept: int) -> str:
    """Reason the shard is broken ("" when it is not): tar damage first, then the images lost."""
    if tar_damage:
        return tar_damage
    if expected > 0 and kept == 0:
        return "no_images"
    if 2 * (expected - kept) > expected:
        return "most_images_dropped"
    return ""


def index_shard(path: str | Path, expected_keys: list[str] | None = None,
                check_members: bool = CHECK_MEMBERS_DEFAULT) -> dict[str, np.ndarray]:
    """Scan one shard -> index arrays (see module doc) plus `stats_json`, the tar's size and mtime, and the
    shard verdict: `shard_name` (file name), `broken` (reason, "" when sound), `expected_images`.

    `expected_keys` (from key_to_shard.json): only these keys are indexed, and the ones absent from the tar
    are counted as `missing_key`. `check_members`: check every required member (counted as `bad_member`).
    """
    path = Path(path)
    st = path.stat()
    stats: Counter = Counter()
    members, tar_damage = _scan_members(path, st.st_size, stats)
    by_key: dict[str, dict[str, tuple[int, int]]] = {}
    for name, loc in members.items():
        key, dot, ext = name.partition(".")
        if dot:
            by_key.setdefault(key, {})[ext] = loc
    keys = list(by_key) if expected_keys is None else list(expected_keys)

    img_keys, img_off, img_size = [], [], []
    inst_img, inst_idx, inst_obj, inst_visib, inst_bbox = [], [], [], [], []
    with open(path, "rb") as fh:
        for key in keys:
            exts = by_key.get(key)
            if exts is None:
                stats["missing_key"] += 1
                continue
            off = np.full(len(SLOT_NAMES), -1, dtype=np.int64)
            size = np.zeros(len(SLOT_NAMES), dtype=np.int64)
            for s, name in enumerate(SLOT_NAMES):
                for ext in SLOTS[name]:
                    if ext in exts:
                        off[s], size[s] = exts[ext]
                        break
            missing = [n for n in REQUIRED_SLOTS if off[SLOT[n]] < 0]
            if missing:
                stats["missing_member"] += 1
                continue
            try:
                gt = _parse_json(fh, off[SLOT["gt"]], size[SLOT["gt"]])
                info = _parse_json(fh, off[SLOT["gt_info"]], size[SLOT["gt_info"]])
                if not isinstance(gt, list) or not isinstance(info, list) or len(gt) != len(info):
                    raise ValueError("gt.json and gt_info.json must be lists of the same length")
                rows = []
                for i, (g, inf) in enumerate(zip(gt, info)):
                    rows.append((i, int(g["obj_id"]), float(inf["visib_fract"]),
                                 _float_list(inf["bbox_visib"], 4)))
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
                stats["bad_json"] += 1
                continue
            if check_members:
                problem = _member_problem(fh, off, size, len(gt))
                if problem is not None:
                    logger.debug("shard %s image %s dropped: %s", path.name, key, problem)
                    stats["bad_member"] += 1
                    continue
            image = len(img_keys)
            img_keys.append(key)
            img_off.append(off)
            img_size.append(size)
            for i, obj, visib, bbox in rows:
                inst_img.append(image)
                inst_idx.append(i)
                inst_obj.append(obj)
                inst_visib.append(visib if np.isfinite(visib) else 0.0)
                inst_bbox.append(bbox)
    stats["images"] += len(img_keys)
    stats["instances"] += len(inst_img)
    broken = _shard_verdict(tar_damage, len(keys), len(img_keys))
    return {
        "keys": np.array(img_keys, dtype="S"),
        "offsets": np.array(img_off, dtype=np.int64).reshape(-1, len(SLOT_NAMES)),
        "sizes": np.array(img_size, dtype=np.int64).reshape(-1, len(SLOT_NAMES)),
        "inst_image": np.array(inst_img, dtype=np.int32),
        "inst_index": np.array(inst_idx, dtype=np.int16),
        "inst_obj": np.array(inst_obj, dtype=np.int32),
        "inst_visib": np.array(inst_visib, dtype=np.float32),
        "inst_bbox_visib": np.array(inst_bbox, dtype=np.float32).reshape(-1, 4),
        "stats_json": np.array(json.dumps(dict(stats))),
        "shard_name": np.array(path.name),
        "broken": np.array(broken),
        "expected_images": np.array(len(keys), dtype=np.int64),
        "check_members": np.array(bool(check_members)),
        "tar_size": np.array(st.st_size, dtype=np.int64),
        "tar_mtime_ns": np.array(st.st_mtime_ns, dtype=np.int64),
        "version": np.array(INDEX_VERSION, dtype=np.int64),
    }


def _cache_valid(cache: Path, tar: Path, check_members: bool = CHECK_MEMBERS_DEFAULT) -> dict | None:
    if not cache.is_file():
        return None
    try:
        with np.load(cache, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception:  # a damaged cache file is rebuilt
        return None
    try:
        st = tar.stat()
    except FileNotFoundError:
        return None
    try:
        if (int(arrays.get("version", -1)) != INDEX_VERSION or int(arrays["tar_size"]) != st.st_size
                or int(arrays["tar_mtime_ns"]) != st.st_mtime_ns
                or bool(arrays["check_members"]) != bool(check_members)):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return arrays


def _index_shard_cached(args: tuple[str, str, list[str] | None, bool]) -> dict[str, np.ndarray]:
    """Index one shard through its cache file, under a per-shard lock (safe with several ranks).

    `args`: (tar path, cache path, expected keys or None, check_members)."""
    tar_path, cache_path, expected, check = Path(args[0]), Path(args[1]), args[2], bool(args[3])
    arrays = _cache_valid(cache_path, tar_path, check)
    if arrays is not None:
        return arrays
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = cache_path.with_suffix(".lock")
    with open(lock_path, "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no locking on this platform: duplicate work is harmless
            pass
        arrays = _cache_valid(cache_path, tar_path, check)
        if arrays is not None:
            return arrays
        arrays = index_shard(tar_path, expected, check)
        tmp = cache_path.with_name(cache_path.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, cache_path)
    return arrays


# --------------------------------------------------------------------------------------------
# The whole split


class ShardIndex:
    """Index of one BOP-webdataset split: images, their member locations, and all annotated instances.

    Per image i (arrays of length n_images): `image_shard[i]` shard id, `keys[i]` BOP key (bytes),
    `offsets[i, slot]` / `sizes[i, slot]` member data location in its tar (-1 offset: absent; slots in
    `SLOT_NAMES`). Per instance j: `inst_image[j]`, `inst_index[j]` (position in gt.json), `inst_obj[j]`,
    `inst_visib[j]` (visib_fract), `inst_bbox_visib[j]` ([x, y, w, h] pixels).
    `stats` counts what was dropped (corrupt_shard, truncated_member, missing_shard, missing_key,
    missing_member, bad_json, bad_member, broken_shards) next to the images and instances kept.
    `broken_shards` lists (shard file name, reason) of every broken shard, in shard order (see module doc);
    the images of a broken shard that passed every check are kept. `check_members` (default
    `CHECK_MEMBERS_DEFAULT`): check every required member of every image at indexing.
    """

    def __init__(self, root: str | Path, split: str = "train_pbr_web", cache_dir: str | Path | None = None,
                 num_workers: int = 0, progress: bool = False, check_members: bool | None = None):
        self.root = Path(root)
        self.split = split
        self.check_members = CHECK_MEMBERS_DEFAULT if check_members is None else bool(check_members)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training set root {self.root} does not exist (or is not a directory)")
        self.shard_dir = self.root / split
        k2s_path = find_key_to_shard(self.root, split)
        if not self.shard_dir.is_dir():
            raise FileNotFoundError(f"training set root {self.root} has no shard folder {self.shard_dir}")
        try:
            key_to_shard = json.loads(k2s_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{k2s_path} is not valid JSON: {exc}") from None
        if not isinstance(key_to_shard, dict):
            raise ValueError(f"{k2s_path} must map keys to shard ids, got a {type(key_to_shard).__name__}")
        per_shard: dict[int, list[str]] = {}
        for key, shard in key_to_shard.items():
            per_shard.setdefault(int(shard), []).append(key)
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.root, split)
        self.stats = IndexStats()
        self.broken_shards: list[tuple[str, str]] = self.stats.broken  # (file name, reason), shard order
        self._broken_detail: list[str] = []
        jobs, shard_ids = [], []
        for shard in sorted(per_shard):
            tar = self.shard_dir / f"shard-{shard:06d}.tar"
            if not tar.is_file():
                logger.info("shard %s listed in key_to_shard.json is missing; its %d images are skipped",
                            tar, len(per_shard[shard]))
                self.stats.add({"missing_shard": 1, "missing_key": len(per_shard[shard])})
                self.broken_shards.append((tar.name, "missing"))
                n = len(per_shard[shard])
                self._broken_detail.append(f"{tar.name} (missing, {n} image{'s' if n != 1 else ''} listed)")
                continue
            jobs.append((str(tar), str(self.cache_dir / f"shard-{shard:06d}.npz"), sorted(per_shard[shard]),
                         self.check_members))
            shard_ids.append(shard)
        results = self._run(jobs, num_workers, progress)
        self._concatenate(shard_ids, results)
        self._report_broken()
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    @staticmethod
    def _run(jobs, num_workers: int, progress: bool) -> list[dict[str, np.ndarray]]:
        todo = [j for j in jobs if _cache_valid(Path(j[1]), Path(j[0]), j[3]) is None]
        if todo:
            logger.info("indexing %d of %d shards (cached in %s)", len(todo), len(jobs), Path(todo[0][1]).parent)
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc="index shards", unit="shard")
        results = []
        if num_workers > 1 and len(todo) > 1:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=num_workers, mp_context=mp.get_context("spawn")) as pool:
                for arrays in pool.map(_index_shard_cached, jobs, chunksize=1):
                    results.append(arrays)
                    if bar is not None:
                        bar.update(1)
        else:
            for job in jobs:
                results.append(_index_shard_cached(job))
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return results

    def _concatenate(self, shard_ids: list[int], results: list[dict[str, np.ndarray]]) -> None:
        n_img = [len(r["keys"]) for r in results]
        img_base = np.concatenate([[0], np.cumsum(n_img)]).astype(np.int64)
        self.shard_ids = np.array(shard_ids, dtype=np.int32)
        self.image_shard = np.concatenate(
            [np.full(n, s, dtype=np.int32) for n, s in zip(n_img, shard_ids)] or [np.zeros(0, np.int32)])
        cat = lambda name, dtype, shape=(0,): (  # noqa: E731
            np.concatenate([r[name] for r in results]) if results else np.zeros(shape, dtype))
        self.keys = cat("keys", "S13")
        self.offsets = cat("offsets", np.int64, (0, len(SLOT_NAMES)))
        self.sizes = cat("sizes", np.int64, (0, len(SLOT_NAMES)))
        self.inst_image = (np.concatenate([r["inst_image"].astype(np.int64) + b for r, b in zip(results, img_base)])
                           if results else np.zeros(0, np.int64)).astype(np.int32)
        self.inst_index = cat("inst_index", np.int16)
        self.inst_obj = cat("inst_obj", np.int32)
        self.inst_visib = cat("inst_visib", np.float32)
        self.inst_bbox_visib = cat("inst_bbox_visib", np.float32, (0, 4))
        for r in results:
            self.stats.add(json.loads(str(r["stats_json"])))
            reason = str(r["broken"])
            if reason:
                name = str(r["shard_name"])
                self.broken_shards.append((name, reason))
                self._broken_detail.append(
                    f"{name} ({reason}, {len(r['keys'])}/{int(r['expected_images'])} images kept)")
        pairs = sorted(zip(self.broken_shards, self._broken_detail))  # missing ones were listed first
        self.broken_shards[:] = [b for b, _ in pairs]
        self._broken_detail = [d for _, d in pairs]

    def _report_broken(self) -> None:
        """One warning naming the broken shards (the first WARN_MAX_NAMES, then how many more)."""
        if not self.broken_shards:
            return
        shown = ", ".join(self._broken_detail[:WARN_MAX_NAMES])
        more = len(self._broken_detail) - WARN_MAX_NAMES
        if more > 0:
            shown += f" ... and {more} more"
        logger.warning("%s: %d broken shard(s) (only their images that passed every check are used): %s",
                       self.shard_dir, len(self.broken_shards), shown)

    @property
    def num_images(self) -> int:
        return len(self.keys)

    def key(self, image: int) -> str:
        return self.keys[image].decode()

    # ---------------------------------------------------------------- reading

    def __getstate__(self):  # file descriptors do not travel to DataLoader workers
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked worker: never share descriptors (or their offsets)
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= 64:
                os.close(self._fds.pop(next(iter(self._fds))))
            fd = os.open(self.shard_dir / f"shard-{shard:06d}.tar", os.O_RDONLY)
            self._fds[shard] = fd
        return fd

    def has(self, image: int, slot: str) -> bool:
        return bool(self.offsets[image, SLOT[slot]] >= 0)

    def read(self, image: int, slot: str) -> bytes:
        """Bytes of member `slot` of image `image`; ShardReadError if absent, short or unreadable."""
        s = SLOT[slot]
        off, size = int(self.offsets[image, s]), int(self.sizes[image, s])
        shard = int(self.image_shard[image])
        if off < 0:
            raise ShardReadError(f"image {self.key(image)} of shard {shard} has no {slot} member")
        try:
            data = os.pread(self._fd(shard), size, off)
        except OSError as exc:
            raise ShardReadError(f"cannot read {slot} of {self.key(image)} from shard {shard}: {exc}") from None
        if len(data) != size:
            raise ShardReadError(f"shard {shard} is shorter than indexed ({slot} of {self.key(image)})")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

    def __del__(self):  # pragma: no cover - best effort
        try:
            if self._pid == os.getpid():
                self.close()
        except Exception:
            pass
