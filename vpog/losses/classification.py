"""Patch classification loss (docs/conventions.md §7): cross-entropy over 197 classes, labels -1 ignored.

For template s and query patch i the target is `patch_cls[s, i]` (docs/conventions.md §4): the buddy template patch
0..195, 196 = unseen, -1 = ignored (no query depth or mask at the patch anchor). The loss is the mean
over non-ignored (template, patch) pairs of every sample, computed in float32; a batch with no labelled
pair gives 0 (not NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vpog.geometry import NUM_PATCHES

IGNORE = -1


def _flat_labels(patch_cls: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    B, S = logits.shape[:2]
    if patch_cls.dim() not in (3, 4) or patch_cls.shape[:2] != (B, S) or math.prod(patch_cls.shape[2:]) != NUM_PATCHES:
        raise ValueError(
            f"patch_cls must have shape [B, S, 14, 14] or [B, S, 196] with B = {B}, S = {S}, got "
            f"{tuple(patch_cls.shape)}"
        )
    if patch_cls.dtype.is_floating_point:
        raise ValueError(f"patch_cls must be an integer tensor, got {patch_cls.dtype}")
    return patch_cls.reshape(B, S, NUM_PATCHES).long()


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 4 or logits.shape[2:] != (NUM_PATCHES, NUM_PATCHES + 1):
        raise ValueError(f"logits must have shape [B, S, 196, 197], got {tuple(logits.shape)}")


def classification_loss(logits: torch.Tensor, patch_cls: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pairs.

    logits: [B, S, 196, 197] (query patch vs template patches + unseen).
    patch_cls: [B, S, 14, 14] or [B, S, 196] int64 in {-1, 0..196}.
    Returns a float32 scalar.
    """
    _check_logits(logits)
    target = _flat_labels(patch_cls, logits)
    valid = target != IGNORE
    ce = F.cross_entropy(
        logits.float().reshape(-1, NUM_PATCHES + 1), target.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    return ce / valid.sum().clamp_min(1).to(ce.dtype)


@torch.no_grad()
def classification_accuracy(logits: torch.Tensor, patch_cls: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logging metrics (no gradient), each a float32 scalar:

    - `cls_acc`: argmax over 197 classes equals the label, over labelled pairs;
    - `cls_acc_seen`: the same over pairs whose label is a template patch (0..195);
    - `cls_acc_unseen`: the same over pairs labelled unseen (196).
    """
    _check_logits(logits)
    target = _flat_labels(patch_cls, logits)
    hit = (logits.argmax(dim=-1) == target).float()
    out = {}
    for name, sel in (
        ("cls_acc", target != IGNORE),
        ("cls_acc_seen", (target >= 0) & (target < NUM_PATCHES)),
        ("cls_acc_unseen", target == NUM_PATCHES),
    ):
        out[name] = (hit * sel).sum() / sel.sum().clamp_min(1)
    return out
