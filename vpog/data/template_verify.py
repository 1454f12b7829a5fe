"""Check a template tree written by `template_render`: which objects are missing, partial or corrupt.

For each expected object (`verify_object`):

- ok: the marker `.done.json` lists the expected number of views at the expected size and level; every
  file has the size and CRC-32 the marker holds; every PNG is RGBA 8-bit / grey 16-bit of the template
  size and decodes (Pillow: chunk CRCs and the zlib checksum), with alpha > 0 exactly where depth > 0;
  the pose file holds finite (V, 4, 4) poses.
- missing: nothing of the object exists.
- partial: a run started it and did not finish (a `.partial` folder, a folder or pose file without
  the marker): the next run redoes it.
- corrupt: the marker exists but something above fails (the reason names the file).

`verify_templates` does this for many objects in threads (decoding releases the GIL) and also lists
debris: leftovers of interrupted runs that belong to no expected object or sit next to finished ones.
"""

from __future__ import annotations

import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .png import SIGNATURE
from .template_render import DONE_FILE, PARTIAL_DIR, done_marker, object_leftovers
from .templates import NUM_VIEWS, pose_path, template_dir, view_files

STATUSES = ("ok", "missing", "partial", "corrupt")


def _check_png(data: bytes, bit_depth: int, color_type: int, width: int, height: int) -> np.ndarray:
    """Decode PNG `data` after checking its header (size, bit depth, colour type); ValueError if off."""
    import io
    import struct

    from PIL import Image

    if data[:8] != SIGNATURE or data[12:16] != b"IHDR" or len(data) < 26:
        raise ValueError("not a PNG file")
    w, h = struct.unpack(">II", data[16:24])
    if (w, h, data[24], data[25]) != (width, height, bit_depth, color_type):
        raise ValueError(f"is {w}x{h}, {data[24]} bits, colour type {data[25]}; expected {width}x{height}, "
                         f"{bit_depth} bits, colour type {color_type}")
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im)


def verify_object(root: str | Path, name: str, obj_id: int, level: int, width: int, height: int,
                  decode: bool = True) -> tuple[str, str]:
    """(status, reason) of one object's templates: status is one of STATUSES (see the module doc)."""
    folder, poses = template_dir(root, name, obj_id), pose_path(root, name, obj_id)
    marker = done_marker(root, name, obj_id)
    if not marker.is_file():
        if folder.exists() or poses.exists() or object_leftovers(root, name, obj_id):
            return "partial", "started but not finished (no marker); the next run redoes it"
        return "missing", "no templates"
    try:
        info = json.loads(marker.read_text())
        files = info["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return "corrupt", f"{marker}: unreadable marker ({exc})"
    expected = NUM_VIEWS[int(level)]
    if (info.get("views"), info.get("level"), info.get("width"), info.get("height"), len(files)) != (
            expected, int(level), int(width), int(height), expected):
        return "corrupt", (f"{marker}: {info.get('views')} views at level {info.get('level')}, "
                           f"{info.get('width')}x{info.get('height')}; expected {expected} at level {level}, "
                           f"{width}x{height}")
    try:
        P = np.load(poses)
    except (OSError, ValueError) as exc:
        return "corrupt", f"{poses}: unreadable ({exc})"
    if P.shape != (expected, 4, 4) or not np.isfinite(P).all():
        return "corrupt", f"{poses}: shape {P.shape} or non-finite values, expected finite ({expected}, 4, 4)"
    for view, entry in enumerate(files):
        arrays = []
        for (fname, kind), size, crc in zip(zip(view_files(view), ((8, 6), (16, 0))), entry[0::2], entry[1::2]):
            path = folder / fname
            try:
                data = path.read_bytes()
            except OSError as exc:
                return "corrupt", f"{path}: unreadable ({exc.strerror or exc})"
            if len(data) != size or zlib.crc32(data) != crc:
                return "corrupt", f"{path}: {len(data)} bytes or CRC differ from the marker (written {size} bytes)"
            if decode:
                try:
                    arrays.append(_check_png(data, *kind, width, height))
                except Exception as exc:  # any decoder error means the same: the file is not a valid view
                    return "corrupt", f"{path}: {type(exc).__name__}: {exc}"
        if decode and not np.array_equal(arrays[0][..., 3] > 0, arrays[1] > 0):
            return "corrupt", f"{folder / view_files(view)[0]}: alpha and depth disagree on the object's pixels"
    return "ok", ""


def find_debris(root: str | Path, name: str, expected_ids) -> list[str]:
    """Leftovers of interrupted runs in a template set: `.partial` entries and older `NNNNNN.tmpPID`
    folders and pose files (any object), and pose files being written."""
    base = Path(root) / name
    ids = set(int(i) for i in expected_ids)
    found = set()
    for i in ids:
        found.update(str(p) for p in object_leftovers(root, name, i))
    for p in list((base / PARTIAL_DIR).glob("*")) + list(base.glob("*.tmp*")):
        found.add(str(p))
    for p in (base / "object_poses").glob(".*.npy"):
        found.add(str(p))
    for i in ids:  # markers being written (a finished object never keeps one)
        found.update(str(p) for p in template_dir(root, name, i).glob(f"{DONE_FILE}.tmp*"))
    return sorted(found)


def verify_templates(root: str | Path, name: str, obj_ids, level: int, width: int, height: int,
                     threads: int = 1, decode: bool = True, progress: bool = False) -> dict:
    """Verify every object of `obj_ids` -> {"objects", "ok", "missing": [ids], "partial": [ids],
    "corrupt": {id: reason}, "debris": [paths]}."""
    ids = [int(i) for i in obj_ids]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ids), desc="verify", unit=" objects", dynamic_ncols=True)
    report: dict = {"objects": len(ids), "ok": 0, "missing": [], "partial": [], "corrupt": {}}
    with ThreadPoolExecutor(max(int(threads), 1), thread_name_prefix="vpog-verify") as pool:
        for obj_id, (status, reason) in zip(ids, pool.map(
                lambda i: verify_object(root, name, i, level, width, height, decode), ids)):
            if status == "ok":
                report["ok"] += 1
            elif status == "corrupt":
                report["corrupt"][obj_id] = reason
            else:
                report[status].append(obj_id)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    report["debris"] = find_debris(root, name, ids)
    return report


def invalidate(root: str | Path, name: str, obj_ids) -> None:
    """Remove the markers of `obj_ids` (corrupt objects) so that the next run renders them again."""
    for i in obj_ids:
        done_marker(root, name, i).unlink(missing_ok=True)
