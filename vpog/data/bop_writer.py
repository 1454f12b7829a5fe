"""Write BOP-webdataset training shards, laid out as GigaPose's MegaPose-GSO/ShapeNet `train_pbr_web` release.

The shards are BOP images (BOP's per-image files) packed as webdataset tars, the form in which GigaPose
uses MegaPose-GSO and -ShapeNet (bop_toolkit's `scripts/convert_imagewise_to_webdataset.py`); this is not
MegaPose's own webdataset format (`shard-%08d.tar` with `segmentation.png`, `infos.json`,
`object_datas.json`). Layout written under a dataset root (docs/conventions.md §2):

    ROOT/train_pbr_web/shard-000000.tar     tar members `{key}.{ext}`, key `{scene:06d}_{image:06d}`
    ROOT/key_to_shard.json                  {key: shard id (int)}
    ROOT/models_info.json                   GigaPose/MegaPose list: [{"obj_id": 1, "label": ..., "diameter": mm,
                                            ...BOP fields}, ...] in id order (GigaPose iterates it)
    ROOT/models/obj_000001.ply              BOP model meshes, millimetres, vertex colours
    ROOT/models/models_info.json            BOP dict: {"<obj_id>": {"diameter": mm, "min_x": ..., ...}}, where
                                            BOP tools look for it

Members of one image: `rgb.jpg`, `depth.png` (uint16, depth_mm = png * depth_scale), `camera.json`
`{"cam_K", "depth_scale"}`, `gt.json` `[{"obj_id", "cam_R_m2c", "cam_t_m2c" (mm)}]`, `gt_info.json`
`[{"bbox_obj", "bbox_visib", "px_count_all", "px_count_valid", "px_count_visib", "visib_fract"}]`,
`mask.json` / `mask_visib.json` `{"<instance index>": uncompressed column-major COCO RLE}`.

Shards are written to a temporary name and renamed when complete, so a crash never leaves a shard that
looks finished; tar headers carry mtime 0 and fixed owners, so a shard is byte-identical for a seed.

References: bop_toolkit `scripts/calc_gt_info.py` (gt_info fields), GigaPose
`src/scripts/convert_imagewise_to_webdataset.py` (shard naming, key_to_shard.json).
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .rle import mask_to_rle

SHARD_DIR = "train_pbr_web"
SHARD_PATTERN = "shard-{:06d}.tar"
DEPTH_SCALE = 0.1  # depth_mm = png * 0.1, as MegaPose-GSO/ShapeNet
JPEG_QUALITY = 95


def image_key(index: int, images_per_scene: int = 1000) -> str:
    """BOP key `{scene:06d}_{image:06d}` of the `index`-th image of a set (1000 images a scene, as BOP PBR)."""
    return f"{index // images_per_scene:06d}_{index % images_per_scene:06d}"


@dataclass
class InstanceRecord:
    """One annotated object instance of an image (pose in metres, masks full-image bool [H, W])."""

    obj_id: int
    T_m2c: np.ndarray  # [4, 4] float, metres
    mask: np.ndarray  # [H, W] bool, silhouette of the object alone (amodal)
    mask_visib: np.ndarray  # [H, W] bool, visible part
    bbox_obj: list[int]  # [x, y, w, h] of the projected model (may leave the image)


@dataclass
class ImageRecord:
    """One rendered training image: rgb uint8 [H, W, 3], depth float32 metres [H, W] (0 = none)."""

    key: str
    rgb: np.ndarray
    depth: np.ndarray
    K: np.ndarray  # [3, 3]
    instances: list[InstanceRecord] = field(default_factory=list)


def _bbox_of_mask(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return [-1, -1, -1, -1]
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def gt_info_entry(inst: InstanceRecord, depth: np.ndarray) -> dict:
    """BOP gt_info for one instance (counts in pixels, visib_fract = visible / all silhouette pixels)."""
    px_all = int(inst.mask.sum())
    px_visib = int(inst.mask_visib.sum())
    px_valid = int((inst.mask & (depth > 0)).sum())
    return {
        "bbox_obj": [int(v) for v in inst.bbox_obj],
        "bbox_visib": _bbox_of_mask(inst.mask_visib),
        "px_count_all": px_all,
        "px_count_valid": px_valid,
        "px_count_visib": px_visib,
        "visib_fract": float(px_visib / px_all) if px_all > 0 else 0.0,
    }


def _png_bytes(array: np.ndarray, compress_level: int = 3) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def depth_to_png(depth_m: np.ndarray, depth_scale: float = DEPTH_SCALE) -> np.ndarray:
    """Depth in metres [H, W] -> uint16 PNG values with depth_mm = png * depth_scale (clipped to 65535)."""
    values = np.round(np.nan_to_num(depth_m, nan=0.0) * 1000.0 / depth_scale)
    return np.clip(values, 0, 65535).astype(np.uint16)


def encode_image(record: ImageRecord, depth_scale: float = DEPTH_SCALE) -> dict[str, bytes]:
    """An ImageRecord -> the BOP-webdataset members of its key, {ext: bytes}, in the order they are written."""
    buf = io.BytesIO()
    Image.fromarray(record.rgb).save(buf, format="JPEG", quality=JPEG_QUALITY)
    gt, gt_info, masks, masks_visib = [], [], {}, {}
    for i, inst in enumerate(record.instances):
        R = np.asarray(inst.T_m2c[:3, :3], dtype=np.float64)
        t_mm = np.asarray(inst.T_m2c[:3, 3], dtype=np.float64) * 1000.0
        gt.append({"cam_R_m2c": R.reshape(-1).tolist(), "cam_t_m2c": t_mm.tolist(), "obj_id": int(inst.obj_id)})
        gt_info.append(gt_info_entry(inst, record.depth))
        masks[str(i)] = mask_to_rle(inst.mask)
        masks_visib[str(i)] = mask_to_rle(inst.mask_visib)
    camera = {"cam_K": np.asarray(record.K, dtype=np.float64).reshape(-1).tolist(), "depth_scale": depth_scale}
    return {
        "camera.json": json.dumps(camera).encode(),
        "depth.png": _png_bytes(depth_to_png(record.depth, depth_scale)),
        "gt.json": json.dumps(gt).encode(),
        "gt_info.json": json.dumps(gt_info).encode(),
        "mask.json": json.dumps(masks).encode(),
        "mask_visib.json": json.dumps(masks_visib).encode(),
        "rgb.jpg": buf.getvalue(),
    }


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_shard(path: str | Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> list[str]:
    """Write `(key, {ext: bytes})` samples into the tar `path` atomically; returns the keys written.

    Members of one key are contiguous (webdataset groups consecutive members by key).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    keys = []
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, members in samples:
                if "." in key:
                    raise ValueError(f"key must not contain '.', got {key!r}")
                for ext, data in members.items():
                    tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
                keys.append(key)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return keys


def writer_token() -> str:
    """`{host}-{pid}`: names this process's temporary files uniquely on a shared file system."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def write_json_atomic(path: str | Path, obj) -> None:
    """json.dump to `path` through a temporary file and a rename (the temporary name carries host and pid:
    array tasks on several nodes may write the same file of a shared set)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{writer_token()}")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    os.replace(tmp, path)


def write_key_to_shard(root: str | Path, key_to_shard: dict[str, int]) -> None:
    """ROOT/key_to_shard.json {key: shard id}, keys sorted."""
    write_json_atomic(Path(root) / "key_to_shard.json", {k: int(key_to_shard[k]) for k in sorted(key_to_shard)})


def models_info_entry(vertices_m: np.ndarray, diameter_m: float, symmetries: dict | None = None) -> dict:
    """BOP models_info entry (millimetres) of a mesh with vertices [N, 3] in metres."""
    v = np.asarray(vertices_m, dtype=np.float64) * 1000.0
    lo, hi = v.min(axis=0), v.max(axis=0)
    entry = {
        "diameter": float(diameter_m * 1000.0),
        "min_x": float(lo[0]), "min_y": float(lo[1]), "min_z": float(lo[2]),
        "size_x": float(hi[0] - lo[0]), "size_y": float(hi[1] - lo[1]), "size_z": float(hi[2] - lo[2]),
    }
    for name, value in (symmetries or {}).items():
        if name not in ("symmetries_discrete", "symmetries_continuous"):
            raise ValueError(f"symmetries keys must be symmetries_discrete/continuous, got {name!r}")
        entry[name] = value
    return entry


def models_info_list(infos: dict[int, dict]) -> list[dict]:
    """GigaPose/MegaPose's list form of `infos` {obj_id: BOP entry}: `[{"obj_id": int, "label": str, ...}]`.

    One entry per object in id order; each keeps its BOP fields (diameter in mm, bounding box, symmetries)
    so readers of either form find them. `label` is the entry's own `label`, else its `source` (the mesh
    file or procedural name), else `obj_{obj_id:06d}`.
    """
    out = []
    for k in sorted(infos):
        info = infos[k]
        entry = {"obj_id": int(k), "label": str(info.get("label", info.get("source", f"obj_{int(k):06d}")))}
        entry.update((name, value) for name, value in info.items() if name not in ("obj_id", "label"))
        out.append(entry)
    return out


def write_models_info(root: str | Path, infos: dict[int, dict]) -> None:
    """ROOT/models/models_info.json in BOP's dict form (keyed by str(obj_id), id order) and ROOT/models_info.json
    in GigaPose/MegaPose's list form (`models_info_list`), which GigaPose's training loader iterates."""
    write_json_atomic(Path(root) / "models" / "models_info.json", {str(k): infos[k] for k in sorted(infos)})
    write_json_atomic(Path(root) / "models_info.json", models_info_list(infos))


def write_model_ply(path: str | Path, vertices_m: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    """Binary little-endian PLY in millimetres with per-vertex uint8 RGB, as BOP models."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = (np.asarray(vertices_m, dtype=np.float64) * 1000.0).astype("<f4")
    f = np.asarray(faces, dtype="<i4")
    c = np.asarray(colors, dtype=np.uint8)[:, :3]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment vpog synthetic model, units: mm\n"
        f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n"
    ).encode()
    vert = np.zeros(len(v), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    vert["xyz"], vert["rgb"] = v, c
    face = np.zeros(len(f), dtype=[("n", "u1"), ("idx", "<i4", 3)])
    face["n"], face["idx"] = 3, f
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(vert.tobytes())
        fh.write(face.tobytes())
    os.replace(tmp, path)
