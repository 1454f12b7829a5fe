"""`VPOGBatch`: what the loader hands the model, with shapes, units and frames (docs/conventions.md §3).

Index 0 along the second axis is the query, 1..S the templates (positives first, then negatives).
B = batch size, S = S_p + S_n templates, C = crop size (224).

| field          | shape              | dtype   | meaning                                                          |
|----------------|--------------------|---------|------------------------------------------------------------------|
| images         | [B, S+1, 3, C, C]  | float32 | RGB in [0, 1], not normalised (the model applies its encoder's  |
|                |                    |         | mean/std, e.g. ImageNet's for CroCo)                             |
| masks          | [B, S+1, C, C]     | bool    | query: visible mask (mask_visib); templates: alpha              |
| depths         | [B, S+1, C, C]     | float32 | metres, z in the camera frame; 0 = no depth. Query: scene depth |
|                |                    |         | (occluders included)                                            |
| K              | [B, S+1, 3, 3]     | float32 | crop intrinsics K_crop = M K (crop pixels, OpenCV)              |
| M              | [B, S+1, 3, 3]     | float32 | full image -> crop pixels affine                                |
| T_m2c          | [B, S+1, 4, 4]     | float32 | model-to-camera poses, metres (OpenCV camera)                   |
| d_ref          | [B, 3]             | float32 | reference viewing direction (model frame, unit): d of t*, or of |
|                |                    |         | a random positive with probability d_ref_random_ratio          |
| template_dirs  | [B, S, 3]          | float32 | templates' viewing directions (model frame, unit)               |
| query_dir      | [B, 3]             | float32 | the query's viewing direction (model frame, unit)               |
| is_positive    | [B, S]             | bool    | True for the S_p positives                                      |
| template_ids   | [B, S]             | int64   | template view indices (0..V-1) in the object's template set     |
| obj_id         | [B]                | int64   | BOP object id                                                   |
| diameter       | [B]                | float32 | object diameter, metres                                         |
| dataset_id     | [B]                | int64   | index of the training set in `data.train_datasets`              |
| keys           | list[str] (B)      |         | "<dataset>/<image key>/<instance index>"                        |
| skipped        | dict[str, int]     |         | bad samples skipped (and replaced) while making this batch,     |
|                |                    |         | by reason; sum them over batches for logging                    |
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

import torch

TENSOR_FIELDS = ("images", "masks", "depths", "K", "M", "T_m2c", "d_ref", "template_dirs", "query_dir",
                 "is_positive", "template_ids", "obj_id", "diameter", "dataset_id")


@dataclass
class VPOGBatch:
    """A training batch; see the module docstring for every field's shape, dtype, unit and frame."""

    images: torch.Tensor
    masks: torch.Tensor
    depths: torch.Tensor
    K: torch.Tensor
    M: torch.Tensor
    T_m2c: torch.Tensor
    d_ref: torch.Tensor
    template_dirs: torch.Tensor
    query_dir: torch.Tensor
    is_positive: torch.Tensor
    template_ids: torch.Tensor
    obj_id: torch.Tensor
    diameter: torch.Tensor
    dataset_id: torch.Tensor
    keys: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def num_templates(self) -> int:
        return self.images.shape[1] - 1

    def __len__(self) -> int:
        return self.batch_size

    def _map(self, fn) -> VPOGBatch:
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in TENSOR_FIELDS:
            kw[name] = fn(kw[name])
        return VPOGBatch(**kw)

    def to(self, device, non_blocking: bool = False) -> VPOGBatch:
        """Copy every tensor to `device`."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> VPOGBatch:
        """Page-locked copy (DataLoader(pin_memory=True) calls this)."""
        return self._map(lambda t: t.pin_memory())


def collate_vpog(samples: list[dict]) -> VPOGBatch:
    """Stack per-sample dicts (from VPOGDataset) into a VPOGBatch; sums their skip counts."""
    if not samples:
        raise ValueError("samples must be a non-empty list")
    kw = {name: torch.stack([s[name] for s in samples]) for name in TENSOR_FIELDS}
    skipped: Counter = Counter()
    for s in samples:
        skipped.update(s.get("skipped", {}))
    return VPOGBatch(**kw, keys=[s["key"] for s in samples], skipped=dict(skipped))
