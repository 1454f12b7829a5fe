"""AdamW with a lower backbone learning rate, linear warm-up then cosine decay.

Parameter groups: (backbone | rest) x (decay | no decay). Biases, norm weights and other 1-D
parameters, and tokens/embeddings the task names, get no weight decay. The backbone (the pretrained
encoder; the task says which parameters are its) trains at `lr * backbone_lr_scale`.

Schedule, as a factor of each group's base learning rate at optimiser step s (0-based):

    s < W:             (s + 1) / W                                   linear warm-up over W steps
    W <= s < S:        m + (1 - m) * (1 + cos(pi * (s - W) / (S - W))) / 2      cosine to m
    s >= S:            m

with W = warmup_steps, S = max_steps, m = min_lr_ratio.

References: pytorch/torchtitan `components/lr_scheduler.py` (warm-up + decay as a LambdaLR);
naver/croco and dust3r (`param_groups_weight_decay`: no decay on 1-D parameters).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class OptimConfig:
    """Optimiser and schedule (mirrors `optim:` in train.yaml)."""

    lr: float = 1.0e-4
    """Peak learning rate of the non-backbone parameters (after warm-up)."""
    backbone_lr_scale: float = 0.1
    """Backbone (encoder) learning rate = lr * backbone_lr_scale."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay (not applied to biases, norms and tokens)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1.0e-8
    """AdamW epsilon."""
    warmup_steps: int = 100
    """Linear warm-up length in optimiser steps."""
    max_steps: int = 2000
    """Length of the run in optimiser steps (the cosine reaches its floor here; training stops here)."""
    min_lr_ratio: float = 0.01
    """The cosine decays to lr * min_lr_ratio."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping; the norm is still logged)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimiser step (gradients are all-reduced once, on the last one)."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if not self.backbone_lr_scale >= 0:
            raise ValueError(f"optim.backbone_lr_scale must be >= 0, got {self.backbone_lr_scale}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two values in [0, 1), got {self.betas}")
        if self.max_steps <= 0:
            raise ValueError(f"optim.max_steps must be > 0, got {self.max_steps}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"optim.warmup_steps must be in [0, max_steps={self.max_steps}], "
                             f"got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0, got {self.grad_clip}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"optim.grad_accum_steps must be >= 1, got {self.grad_accum_steps}")


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Warm-up + cosine factor of the base learning rate at optimiser step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr_ratio
    span = max(1, max_steps - warmup_steps)
    progress = (step - warmup_steps) / span
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, config: OptimConfig, is_backbone: Callable[[str], bool],
                 no_decay_names: Sequence[str] = ()) -> list[dict]:
    """AdamW parameter groups: backbone / rest x decay / no decay, empty groups dropped.

    `is_backbone(name)` says whether a parameter (by its name in `model`) is backbone; a name containing
    one of `no_decay_names` (e.g. "unseen_token") gets no weight decay, as 1-D parameters don't.
    """
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and not any(k in name for k in no_decay_names)
        buckets.setdefault((bool(is_backbone(name)), decay), []).append(p)
    groups = []
    for (backbone, decay), params in sorted(buckets.items()):
        scale = config.backbone_lr_scale if backbone else 1.0
        groups.append({
            "params": params,
            "lr": config.lr * scale,
            "weight_decay": config.weight_decay if decay else 0.0,
            "name": f"{'backbone' if backbone else 'head'}_{'decay' if decay else 'no_decay'}",
        })
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        log.info("param group %s: %d tensors, %.2fM parameters, lr %.3g, weight decay %.3g", g["name"],
                 len(g["params"]), sum(p.numel() for p in g["params"]) / 1e6, g["lr"], g["weight_decay"])
    return groups


def build_optimizer(model: nn.Module, config: OptimConfig, is_backbone: Callable[[str], bool],
                    no_decay_names: Sequence[str] = ()) -> torch.optim.AdamW:
    """AdamW over `param_groups` (the fused CUDA implementation when every parameter is on a GPU)."""
    groups = param_groups(model, config, is_backbone, no_decay_names)
    on_cuda = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps,
                             weight_decay=config.weight_decay, fused=True if on_cuda else None)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `lr_factor` to every group's base learning rate (call `.step()` once per optimiser step)."""
    w, s, m = config.warmup_steps, config.max_steps, config.min_lr_ratio
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, w, s, m))
