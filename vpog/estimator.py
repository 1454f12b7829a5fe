"""Pose estimation on full images: the Python API behind `vpog.bop.predict`.

    from vpog import PoseEstimator
    est = PoseEstimator.from_checkpoint("outputs/run", device="cuda")
    est.set_templates("bop_templates", "lmo")                   # GigaPose-layout templates (vpog.bop.templates)
    for p in est.estimate(rgb, K, detections):                    # rgb uint8 [H, W, 3], K [3, 3] pixels
        print(p.obj_id, p.score, p.R, p.t)                        # t in metres, model to camera

Each detection (`vpog.bop.detections.Detection`: object id, score, box x, y, w, h, optional mask) is
cropped as the training loader crops a query (a square of side box_scale x max(w, h) around the box,
224 x 224, mask cropped with it), then the inference path of `vpog.evaluate` runs on it: template
group retrieval, flow, correspondences, PnP hypotheses (`vpog.evaluation.inference.estimate_poses`).
The templates of an object are cropped and encoded once, and kept for the next `cache_objects`
objects. Everything is metres inside vpog; BOP files are written in millimetres by `vpog.bop`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vpog.config_schema import from_mapping
from vpog.data.crop import box_from_mask, box_from_xywh, crop_matrix, warp_crop
from vpog.data.templates import TemplateSet
from vpog.evaluation.inference import InferenceConfig, ObjectTemplates, encode, estimate_poses
from vpog.evaluation.objects import ObjectLibrary
from vpog.geometry import CROP_SIZE

log = logging.getLogger(__name__)


@dataclass
class PoseEstimate:
    """The pose of one detection (R, t None when the detection was skipped: see `skipped`)."""

    obj_id: int
    score: float
    """the detection's score (BOP ranks estimates by it)."""
    R: np.ndarray | None
    """[3, 3] float64 rotation, model to camera."""
    t: np.ndarray | None
    """[3] float64 translation, metres."""
    time: float
    """seconds spent on this detection (its share of its object's batch, templates encoding included)."""
    pnp_valid: bool = False
    """PnP produced the pose (False: the retrieved template's pose, moved to the detection)."""
    template: int = -1
    """retrieved template view."""
    skipped: str | None = None
    """why there is no pose: "no_templates", "empty_mask" or "bad_box"; None when estimated."""


class SkipDetection(ValueError):
    """A detection that cannot be estimated; `reason` is the PoseEstimate.skipped value."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class QueryCrop:
    image: torch.Tensor
    """[3, 224, 224] float RGB in [0, 1]."""
    mask: torch.Tensor
    """[224, 224] bool visible mask (the whole box when the detection has no mask)."""
    K: torch.Tensor
    """[3, 3] float32 crop intrinsics M K."""


class PoseEstimator:
    """A VPOG model plus the templates of the objects it estimates."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu",
                 inference: InferenceConfig | None = None, box_scale: float = 1.0, mask_query_rgb: bool = False,
                 cache_objects: int = 16):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.inference = inference or InferenceConfig()
        self.box_scale = float(box_scale)
        self.mask_query_rgb = bool(mask_query_rgb)
        self.cache_objects = max(1, int(cache_objects))
        self.templates: TemplateSet | None = None
        self._library: ObjectLibrary | None = None
        self._tokens: OrderedDict[int, tuple[ObjectTemplates, torch.Tensor]] = OrderedDict()

    @classmethod
    def from_checkpoint(cls, path: str | Path | None, device: str | torch.device = "auto",
                        model: dict | str | None = None, inference: InferenceConfig | dict | None = None,
                        seed: int = 0, **kw) -> PoseEstimator:
        """Load a vpog checkpoint (file, run folder or state dict; see `vpog.evaluation.command.read_checkpoint`).

        model: the architecture (a `vpog/config/model/*.yaml` name or dict) when the checkpoint saves
        none; path None: an untrained model of that architecture (seeded). The query crop settings
        (`box_scale`, `mask_query_rgb`) come from the checkpoint's saved data config when present.
        """
        from vpog.evaluation.command import load_vpog, read_checkpoint, resolve_device

        state, saved, file = (None, None, None) if path is None else read_checkpoint(path)
        model_dict = _model_dict(model) if model is not None else None
        if path is None and model_dict is None:
            model_dict = _model_dict("vpog_vitb")
        net = load_vpog(state, saved, model_dict, seed, where=f"checkpoint {file}")
        if path is None:
            log.warning("no checkpoint: estimating with an untrained model")
        data = (saved or {}).get("data") or {}
        kw.setdefault("box_scale", float(data.get("box_scale", 1.0)))
        kw.setdefault("mask_query_rgb", bool(data.get("mask_query_rgb", False)))
        if isinstance(inference, dict):
            inference = from_mapping(InferenceConfig, inference, "inference")
        return cls(net, resolve_device(str(device)), inference=inference, **kw)

    # ------------------------------------------------------------------ templates

    def set_templates(self, root: str | Path | TemplateSet, name: str | None = None) -> None:
        """Use the GigaPose-layout template set `root/name` (or a TemplateSet)."""
        self.templates = root if isinstance(root, TemplateSet) else TemplateSet(root, name)
        self._library = ObjectLibrary(self.templates, crop_size=CROP_SIZE, cache_objects=1)
        self._tokens.clear()

    def has_templates(self, obj_id: int) -> bool:
        return self.templates is not None and self.templates.has_object(obj_id)

    def object_templates(self, obj_id: int) -> tuple[ObjectTemplates, torch.Tensor]:
        """An object's cropped templates on the device and their encoder tokens (cached)."""
        if self._library is None:
            raise RuntimeError("PoseEstimator has no templates: call set_templates(root, name) first")
        hit = self._tokens.get(obj_id)
        if hit is None:
            t = self._library.templates(obj_id, self.device)
            with torch.no_grad():
                tokens = encode(self.model, t.images)
            hit = (t, tokens)
            self._tokens[obj_id] = hit
            while len(self._tokens) > self.cache_objects:
                self._tokens.popitem(last=False)
        else:
            self._tokens.move_to_end(obj_id)
        return hit

    # ------------------------------------------------------------------ queries

    def crop(self, rgb: np.ndarray, K: np.ndarray, bbox: np.ndarray, mask: np.ndarray | None) -> QueryCrop:
        """Crop one detection as the training loader crops a query. SkipDetection for an empty mask or box;
        ValueError for a mask whose shape is not the image's."""
        H, W = rgb.shape[:2]
        if mask is not None:
            if mask.shape != (H, W):
                raise ValueError(f"mask has shape {mask.shape}, the image {(H, W)}")
            if not mask.any():
                raise SkipDetection("empty_mask")
        if bbox[2] > 0 and bbox[3] > 0:
            box = box_from_xywh(bbox, self.box_scale)
        elif mask is not None:
            box = box_from_mask(mask, self.box_scale)
        else:
            raise SkipDetection("bad_box", f"box {list(bbox)} has no area and there is no mask")
        if mask is None:  # a box-only detection: every pixel of the box counts as the object
            x, y, w, h = (int(round(v)) for v in bbox)
            mask = np.zeros((H, W), dtype=bool)
            mask[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = True
        M = crop_matrix(box, CROP_SIZE)
        image = warp_crop(rgb, M, CROP_SIZE, "bilinear") / np.float32(255.0)
        q_mask = warp_crop(mask.astype(np.uint8), M, CROP_SIZE, "nearest") > 0.5
        if not q_mask.any():
            raise SkipDetection("empty_mask", "the mask is outside the crop")
        if self.mask_query_rgb:
            image = image * q_mask[..., None]
        return QueryCrop(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1),
                         torch.from_numpy(q_mask), torch.from_numpy((M @ np.asarray(K, np.float64)).astype(np.float32)))

    @torch.no_grad()
    def estimate(self, rgb: np.ndarray, K: np.ndarray, detections: list) -> list[PoseEstimate]:
        """Poses of the detections of one image, in the detections' order.

        rgb: uint8 [H, W, 3]; K: [3, 3] pixels; detections: objects with obj_id, score, bbox [x, y, w, h]
        and `mask()` (bool [H, W] or None), e.g. `vpog.bop.detections.Detection`.
        """
        rgb = np.asarray(rgb)
        K = np.asarray(K, dtype=np.float64)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
        if K.shape != (3, 3) or not np.isfinite(K).all():
            raise ValueError(f"K must be a finite [3, 3] matrix, got shape {K.shape}")
        out: list[PoseEstimate | None] = [None] * len(detections)
        by_obj: dict[int, list[tuple[int, QueryCrop]]] = {}
        for i, det in enumerate(detections):
            t0 = time.perf_counter()
            obj_id, score = int(det.obj_id), float(det.score)
            reason = None if self.has_templates(obj_id) else "no_templates"
            if reason is None:
                try:
                    crop = self.crop(rgb, K, np.asarray(det.bbox, dtype=np.float64), det.mask())
                except SkipDetection as exc:
                    reason = exc.reason
                    log.debug("detection %d (object %d) skipped: %s", i, obj_id, exc)
            if reason is not None:
                out[i] = PoseEstimate(obj_id, score, None, None, time.perf_counter() - t0, skipped=reason)
                continue
            by_obj.setdefault(obj_id, []).append((i, crop))
        for obj_id, items in by_obj.items():
            t0 = time.perf_counter()
            templates, tokens = self.object_templates(obj_id)
            dev = self.device
            images = torch.stack([c.image for _, c in items]).to(dev)
            masks = torch.stack([c.mask for _, c in items]).to(dev)
            Ks = torch.stack([c.K for _, c in items]).to(dev)
            est = estimate_poses(self.model, images, masks, Ks, templates, self.inference, template_tokens=tokens)
            pose = est.pose.double().cpu().numpy()
            share = (time.perf_counter() - t0) / len(items)
            for j, (i, _) in enumerate(items):
                out[i] = PoseEstimate(obj_id, float(detections[i].score), pose[j, :3, :3].copy(), pose[j, :3, 3].copy(),
                                      share, pnp_valid=bool(est.valid[j]), template=int(est.template[j]))
        return out


def _model_dict(model: dict | str) -> dict:
    """A model config: a dict as is, or the name of a `vpog/config/model/*.yaml` file."""
    if isinstance(model, dict):
        return dict(model)
    from vpog.model.config import load_model_config

    return load_model_config(model).to_dict()
