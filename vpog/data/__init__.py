"""Training data: synthetic sets in the MegaPose/GigaPose formats, and the VPOG loader.

- `python -m vpog.data.synthesize ...` writes BOP-webdataset shards and GigaPose templates from any meshes
  (or procedural objects); `ensure_synthetic_dataset` does it on first use (needs the `render` extra).
- `VPOGDataset`, `MixedSampler`, `build_train_loader` read MegaPose-GSO/ShapeNet and synthetic roots into
  `VPOGBatch` (torch, numpy and Pillow only). Objects are filtered per set by
  `train_datasets[i].object_ids` / `exclude_object_ids` or `VPOGDataset.restrict_objects` (held-out objects).

Names are imported lazily so that the loader never pulls in trimesh or pyrender.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "VPOGBatch": ".batch",
    "collate_vpog": ".batch",
    "DataConfig": ".dataset",
    "TrainSetConfig": ".dataset",
    "VPOGDataset": ".dataset",
    "MixedSampler": ".dataset",
    "build_train_loader": ".dataset",
    "prepare_train_data": ".dataset",
    "ShardIndex": ".shards",
    "TrainingSource": ".sources",
    "ensure_synthetic_dataset": ".synthesize",
    "synthesize": ".synthesize",
    "template_poses": ".templates",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
