"""Pose inference and evaluation on unseen objects (docs/conventions.md §8).

    metrics          rotation / translation error, ADD(-S), BOP MSSD / MSPD with symmetries, recalls
    correspondences  2D-3D correspondences from buddies + dense flow (labels or predictions)
    inference        template-group scoring, d_ref, PnP hypotheses, nearest-template pose
    objects          per-object diameters, symmetries, model points and template crops
    split            object-level train / held-out split
    runner           the evaluation loop and the trainer's `PoseValidator`
    scoring, report, plots   error tables, summaries, JSON / Markdown / PNG report
    command          what `python -m vpog.evaluate` runs

Importing this package needs torch, numpy and Pillow only (omegaconf / hydra only for the CLI).
"""

from vpog.evaluation.inference import InferenceConfig, ObjectTemplates, PoseEstimates, estimate_poses
from vpog.evaluation.objects import ObjectLibrary
from vpog.evaluation.runner import PoseValidator, evaluate_batch, evaluate_model
from vpog.evaluation.split import ObjectSubset, SplitConfig, object_subset, split_objects

__all__ = [
    "InferenceConfig",
    "ObjectLibrary",
    "ObjectSubset",
    "ObjectTemplates",
    "PoseEstimates",
    "PoseValidator",
    "SplitConfig",
    "estimate_poses",
    "evaluate_batch",
    "evaluate_model",
    "object_subset",
    "split_objects",
]
