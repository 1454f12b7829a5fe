"""Per-object resources for evaluation: diameter, symmetries, model points and every template crop.

An `ObjectLibrary` wraps one training-set root (a `vpog.data.sources.TrainingSource`: BOP models
info, GigaPose templates) and serves, per object id:

- `info(obj_id)`: `EvalObject` with the diameter (metres), the symmetry transforms of its
  `models_info.json` entry (`metrics.symmetry_transforms`) and model points for ADD / MSSD / MSPD:
  the vertices of `ROOT/models/obj_{id:06d}.ply` (BOP models, millimetres), at most
  `max_model_points` of them (a seeded subset); without a PLY, points lifted from the template
  depth maps (the visible surface from every template view) instead;
- `templates(obj_id)`: all V templates cropped by their alpha box and resized to the crop size
  exactly as the training loader crops them (`vpog.data.crop`), with crop intrinsics `M K`.

The last `cache_objects` objects are kept in memory (images as uint8).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vpog.data.crop import box_from_mask, crop_matrix, warp_crop
from vpog.evaluation.inference import ObjectTemplates
from vpog.evaluation.metrics import symmetry_transforms
from vpog.geometry import CROP_SIZE, backproject, invert_pose, transform_points

log = logging.getLogger(__name__)

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply_vertices(path: str | Path) -> np.ndarray:
    """Vertex positions (x, y, z) of a PLY file (ascii or binary, vertex element first) -> float64 [N, 3].

    Units are the file's (BOP models: millimetres). Raises ValueError for a file it cannot read.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path} is not a PLY file")
        fmt, elements = None, []
        while True:
            line = fh.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            words = line.decode("ascii", "replace").split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                break
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property" and elements:
                if words[1] == "list":
                    elements[-1][2].append((words[4], None))
                else:
                    elements[-1][2].append((words[2], _PLY_TYPES.get(words[1])))
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: the first PLY element must be 'vertex'")
        _, n, props = elements[0]
        names = [p[0] for p in props]
        if not {"x", "y", "z"} <= set(names) or any(t is None for _, t in props):
            raise ValueError(f"{path}: vertex element needs scalar x, y, z properties, got {names}")
        if fmt == "ascii":
            rows = [fh.readline().split() for _ in range(n)]
            data = np.array(rows, dtype=np.float64)[:, : len(names)]
            cols = [names.index(c) for c in ("x", "y", "z")]
            return data[:, cols]
        endian = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
        if endian is None:
            raise ValueError(f"{path}: unknown PLY format {fmt!r}")
        dtype = np.dtype([(name, endian + t) for name, t in props])
        raw = np.frombuffer(fh.read(dtype.itemsize * n), dtype=dtype, count=n)
        return np.stack([raw["x"], raw["y"], raw["z"]], axis=-1).astype(np.float64)


def _crop(image: np.ndarray, M: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """`vpog.data.crop.warp_crop` as a float32 tensor (whatever array type it returns)."""
    return torch.as_tensor(np.asarray(warp_crop(image, M, size, mode), dtype=np.float32))


@dataclass
class EvalObject:
    """What the metrics need about one object."""

    obj_id: int
    diameter: float
    """metres."""
    model_info: dict
    """its models_info.json entry (BOP units, millimetres)."""
    syms: torch.Tensor
    """[M, 4, 4] float64 symmetry transforms, metres (identity first)."""
    points: torch.Tensor
    """[P, 3] float32 model points, model frame, metres."""

    @property
    def symmetric(self) -> bool:
        return len(self.syms) > 1


class ObjectLibrary:
    """Diameters, symmetries, model points and template crops of the objects of one training source."""

    def __init__(self, source, crop_size: int = CROP_SIZE, max_model_points: int = 2000, cache_objects: int = 2,
                 seed: int = 0):
        self.source = source
        self.crop_size = int(crop_size)
        self.max_model_points = int(max_model_points)
        self.cache_objects = max(1, int(cache_objects))
        self.seed = int(seed)
        self._info: dict[int, EvalObject] = {}
        self._templates: OrderedDict[int, tuple] = OrderedDict()

    # ---------------------------------------------------------------- templates

    def _load_templates(self, obj_id: int) -> tuple:
        src, size = self.source, self.crop_size
        poses, _ = src.template_poses(obj_id)  # [V, 4, 4] metres
        K_full = np.asarray(src.template_K, dtype=np.float64)
        imgs, masks, depths, Ks = [], [], [], []
        for v in range(len(poses)):
            rgba, depth = src.read_template(obj_id, v)  # query-world metres (the set's scale_factor applied)
            rgb, mask = np.ascontiguousarray(rgba[..., :3]), rgba[..., 3] >= 128
            if mask.any():
                M = crop_matrix(box_from_mask(mask), size)
            else:  # an empty view (object out of the frame): the whole image, nothing on it
                log.warning("object %d template %d has an empty mask", obj_id, v)
                M = crop_matrix(((mask.shape[1] - 1) / 2, (mask.shape[0] - 1) / 2, float(max(mask.shape))), size)
            imgs.append(_crop(rgb, M, size, "bilinear").round().clamp(0, 255).to(torch.uint8))
            masks.append(_crop(mask.astype(np.uint8), M, size, "nearest") > 0.5)
            depths.append(_crop(depth, M, size, "nearest"))
            Ks.append(torch.from_numpy((M @ K_full).astype(np.float32)))
        return (torch.stack(imgs).permute(0, 3, 1, 2).contiguous(), torch.stack(masks), torch.stack(depths),
                torch.stack(Ks), torch.from_numpy(np.asarray(poses, dtype=np.float32)))

    def templates(self, obj_id: int, device=None) -> ObjectTemplates:
        """All templates of `obj_id`, cropped like the training loader's, on `device`."""
        obj_id = int(obj_id)
        entry = self._templates.get(obj_id)
        if entry is None:
            entry = self._load_templates(obj_id)
            self._templates[obj_id] = entry
            while len(self._templates) > self.cache_objects:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(obj_id)
        imgs, masks, depths, Ks, poses = (t.to(device) if device is not None else t for t in entry)
        return ObjectTemplates(obj_id, imgs.float() / 255.0, masks, depths.float(), Ks, poses)

    # ---------------------------------------------------------------- model

    def _points(self, obj_id: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, obj_id, 13])
        ply = Path(self.source.root) / "models" / f"obj_{obj_id:06d}.ply"
        pts = None
        if ply.is_file():
            try:
                pts = read_ply_vertices(ply) / 1000.0  # BOP models are in millimetres
            except ValueError as exc:
                log.warning("cannot read %s (%s); model points come from the template depth maps", ply, exc)
        if pts is None or len(pts) == 0:
            pts = self._points_from_templates(obj_id, rng)
        if len(pts) > self.max_model_points:
            pts = pts[np.sort(rng.choice(len(pts), self.max_model_points, replace=False))]
        return torch.from_numpy(np.ascontiguousarray(pts, dtype=np.float32))

    def _points_from_templates(self, obj_id: int, rng: np.random.Generator) -> np.ndarray:
        t = self.templates(obj_id)
        per_view = max(1, 4 * self.max_model_points // max(t.num_views, 1))
        out = []
        for v in range(t.num_views):
            vv, uu = torch.nonzero(t.masks[v] & (t.depths[v] > 0), as_tuple=True)
            if len(uu) == 0:
                continue
            pick = torch.from_numpy(rng.choice(len(uu), min(per_view, len(uu)), replace=False))
            uv = torch.stack([uu[pick], vv[pick]], -1).float()
            x = backproject(uv, t.depths[v][vv[pick], uu[pick]], t.K[v])
            out.append(transform_points(invert_pose(t.poses[v]), x).numpy())
        if not out:
            raise ValueError(f"object {obj_id}: no model PLY and no template depth to take model points from")
        return np.concatenate(out).astype(np.float64)

    def info(self, obj_id: int) -> EvalObject:
        """Diameter, symmetries and model points of `obj_id` (cached)."""
        obj_id = int(obj_id)
        if obj_id not in self._info:
            model_info = dict(self.source.models_info.get(obj_id, {}))
            self._info[obj_id] = EvalObject(
                obj_id=obj_id, diameter=float(self.source.diameter(obj_id)), model_info=model_info,
                syms=symmetry_transforms(model_info), points=self._points(obj_id))
        return self._info[obj_id]
