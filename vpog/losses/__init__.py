"""VPOG's training losses (docs/conventions.md §7): patch classification, Laplace flow NLL, and the pose-loss hook."""

from vpog.losses.classification import classification_accuracy, classification_loss
from vpog.losses.correspondences import Correspondences, sample_correspondences
from vpog.losses.flow import FlowLossTerms, flow_loss
from vpog.losses.total import LossWeights, PoseLoss, PoseTargets, vpog_loss

__all__ = [
    "Correspondences",
    "FlowLossTerms",
    "LossWeights",
    "PoseLoss",
    "PoseTargets",
    "classification_accuracy",
    "classification_loss",
    "flow_loss",
    "sample_correspondences",
    "vpog_loss",
]
