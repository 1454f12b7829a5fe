"""2D detections of BOP objects: the BOP default-detections JSON (as CNOS writes it), or oracle boxes.

File format: a JSON list with one entry per detection,

    {"scene_id": int, "image_id": int, "category_id": obj_id, "score": float, "bbox": [x, y, w, h] (pixels),
     "segmentation": {"counts": [...] or "compressed string", "size": [H, W]}, "time": seconds for the image}

`segmentation` is a COCO RLE over the mask in column-major order, starting with a run of zeros: CNOS
writes uncompressed counts (`src/model/utils.py`, mask_to_rle and convert_npz_to_json; boxes turned to
x, y, w, h by `Detections.save_to_file`), pycocotools' encoder a compressed string; both are read.
`time` is the detector's time for the whole image, repeated on each of its detections.

Without a detections file, `oracle_detections` gives each ground-truth instance's visible box and mask
(score 1): results made from them are marked as using oracle detections.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpog.bop.dataset import BopDataset, Target
from vpog.data.rle import rle_to_mask


@dataclass
class Detection:
    """One detected object instance in a full image."""

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    bbox: np.ndarray
    """[4] float64 x, y, w, h pixels (BOP / COCO box)."""
    rle: dict | None = None
    """COCO RLE of the mask, decoded by `mask()`; None when the detector gave only a box."""
    mask_array: np.ndarray | None = None
    """bool [H, W] mask given directly (oracle detections)."""
    time: float = 0.0
    """detector seconds for the whole image (0 for oracle detections)."""

    def mask(self) -> np.ndarray | None:
        """bool [H, W] mask, or None when the detection has no mask."""
        if self.mask_array is not None:
            return self.mask_array
        if self.rle is None:
            return None
        return rle_to_mask(self.rle)


class DetectionsFile:
    """The detections of a BOP default-detections JSON, grouped by image (masks decoded on demand)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"detections file {self.path} does not exist")
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path} is not valid JSON: {exc}") from None
        if not isinstance(data, list):
            raise ValueError(f"{self.path} must hold a JSON list of detections "
                             f"({{scene_id, image_id, category_id, score, bbox, segmentation, time}}), "
                             f"got {type(data).__name__}")
        self.by_image: dict[tuple[int, int], list[Detection]] = defaultdict(list)
        for i, d in enumerate(data):
            det = self._parse(d, i)
            self.by_image[(det.scene_id, det.im_id)].append(det)
        self.num_detections = len(data)

    def _parse(self, d, i: int) -> Detection:
        where = f"{self.path}: detection {i}"
        try:
            bbox = np.asarray(d["bbox"], dtype=np.float64)
            seg = d.get("segmentation")
            det = Detection(scene_id=int(d["scene_id"]), im_id=int(d["image_id"]), obj_id=int(d["category_id"]),
                            score=float(d["score"]), bbox=bbox, rle=seg, time=float(d.get("time", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where} needs scene_id, image_id, category_id, score and bbox [x, y, w, h] "
                             f"({type(exc).__name__}: {exc})") from None
        if bbox.shape != (4,) or not np.isfinite(bbox).all():
            raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {d['bbox']!r}")
        if seg is not None and not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
            raise ValueError(f"{where}: segmentation must be a COCO RLE {{counts, size}}, got {type(seg).__name__}")
        return det

    def image(self, scene_id: int, im_id: int) -> list[Detection]:
        return list(self.by_image.get((int(scene_id), int(im_id)), []))

    def time(self, scene_id: int, im_id: int) -> float:
        """Detector seconds for an image (the largest `time` of its detections; 0 without detections)."""
        return max((d.time for d in self.image(scene_id, im_id)), default=0.0)


def oracle_detections(dataset: BopDataset, scene_id: int, im_id: int, visib_gt_min: float = 0.0) -> list[Detection]:
    """Ground-truth visible boxes and masks of an image as detections (score 1, time 0)."""
    out = []
    for g in dataset.gt(scene_id, im_id):
        if g.visib_fract is not None and g.visib_fract < visib_gt_min:
            continue
        mask = dataset.mask_visib(scene_id, im_id, g.index)
        if not mask.any():
            continue
        if g.bbox_visib is not None and g.bbox_visib[2] > 0 and g.bbox_visib[3] > 0:
            bbox = g.bbox_visib
        else:
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            bbox = np.array([cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1], dtype=np.float64)
        out.append(Detection(scene_id, im_id, g.obj_id, 1.0, np.asarray(bbox, dtype=np.float64),
                             mask_array=mask, time=0.0))
    return out


def select_for_targets(detections: list[Detection], targets: list[Target]) -> list[Detection]:
    """Per target object of an image, its `inst_count` best detections by score (highest first)."""
    by_obj: dict[int, list[Detection]] = defaultdict(list)
    for d in detections:
        by_obj[d.obj_id].append(d)
    out = []
    for t in targets:
        ranked = sorted(by_obj.get(t.obj_id, []), key=lambda d: -d.score)
        out.extend(ranked[: t.inst_count])
    return out
