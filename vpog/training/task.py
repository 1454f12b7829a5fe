"""The trainer's view of a model and its data: a `TrainTask`.

The trainer owns everything that is not specific to VPOG: processes, devices, precision, the
optimiser and schedule, checkpoints, signals, non-finite steps, sampling and logging. A task owns the
rest: which model, which data sets, what one training step computes, what validation measures and
what images to show. `vpog.training.step.VPOGTask` is the real one (`task: vpog` in train.yaml); the
tests drive the same trainer with a small task of their own (`task: module.path:ClassName`).

References: pytorch/torchtitan `train.py` / `trainer.py` (a generic trainer configured with model- and
data-specific builders).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

log = logging.getLogger(__name__)

TASKS = {"vpog": "vpog.training.step:VPOGTask"}
"""Short task names accepted by the `task` config key; anything else must be `module.path:ClassName`."""


@dataclass
class StepContext:
    """What a task's step may need to know about the run."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    step: int
    """Optimiser step being computed (0-based)."""
    rank: int = 0
    world_size: int = 1
    training: bool = True

    def autocast(self):
        """bf16/fp16 autocast on the device when mixed precision is on, else a no-op context."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


@dataclass
class StepOutput:
    """Result of one micro-batch."""

    loss: torch.Tensor
    """Scalar to minimise (before division by the accumulation steps)."""
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    """Scalars to log under these names (detached by the trainer), e.g. "loss_cls", "cls_acc"; the same keys on
    every rank and every step."""
    num_samples: int = 0
    """Training samples (queries) in the micro-batch."""
    num_images: int = 0
    """Images the network processed (query + templates per sample)."""
    num_skipped_samples: int = 0
    """Samples the data pipeline or the step could not use (broken shard records, no valid labels, ...)."""
    outputs: Any = None
    """Whatever `TrainTask.visualise` needs (model outputs, labels); not kept beyond the step."""


class TrainTask:
    """Base class: override what differs. Methods are called on every rank unless noted."""

    find_unused_parameters: bool = False
    """Passed to DistributedDataParallel (True when some parameters may get no gradient in a step)."""
    no_decay_names: Sequence[str] = ()
    """Parameter-name fragments excluded from weight decay besides 1-D parameters (e.g. learned tokens)."""
    pass_sample_seed: bool = False
    """True when the datasets take `(index, seed)` keys and draw from their own generator seeded with it;
    False: the trainer seeds the global RNGs before each sample instead (see `sampler.PositionedDataset`)."""

    def __init__(self, cfg: Any, *, rank: int = 0, world_size: int = 1) -> None:
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size

    # -- building ------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Rank 0 only, before the others read any data: create data on first use (the trainer then waits)."""

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def is_backbone(self, name: str) -> bool:
        """Whether parameter `name` belongs to the pretrained backbone (trained at a scaled learning rate)."""
        return False

    def train_dataset(self) -> Dataset:
        raise NotImplementedError

    def val_dataset(self) -> Dataset | None:
        """Held-out data for periodic validation; None disables validation."""
        return None

    def epoch_order(self, dataset: Dataset) -> tuple[int, Callable[[int], Sequence[int]]] | None:
        """(samples per epoch, order(epoch) -> that many dataset indices, the same on every rank), e.g. to mix
        several sets by ratio; None: a random permutation of the whole dataset every epoch."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Per-rank state outside the model to checkpoint (running statistics of a loss, ...)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of `state_dict` (this rank's saved state, or rank 0's after a world-size change)."""

    def collate(self, samples: list[Any]) -> Any:
        return default_collate(samples)

    def batch_size(self) -> int:
        """Samples per rank per micro-batch."""
        raise NotImplementedError

    def worker_init_fn(self) -> Callable[[int], None] | None:
        """Extra DataLoader worker initialisation (the trainer adds its own signal setup)."""
        return None

    # -- running -------------------------------------------------------------------------------

    def train_step(self, model: nn.Module, batch: Any, ctx: StepContext) -> StepOutput:
        """Forward one micro-batch and return its loss (the trainer does backward and the update)."""
        raise NotImplementedError

    def val_step(self, model: nn.Module, batch: Any, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Validation values of one batch, each a 1-D tensor (per sample, or one value for the batch).

        Called under no_grad with the model in eval mode. The default returns the training loss terms.
        """
        out = self.train_step(model, batch, ctx)
        return {k: v.detach().float().reshape(1) for k, v in {"loss": out.loss, **out.terms}.items()}

    def summarise_val(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """Rank 0: all ranks' `val_step` values, concatenated -> the numbers to log (default: means)."""
        return {k: float(v.float().mean()) for k, v in values.items() if v.numel()}

    def visualise(self, batch: Any, output: StepOutput) -> dict[str, np.ndarray]:
        """Rank 0, every `log.image_every_steps`: named HxWx3 uint8 images of the last micro-batch."""
        return {}


def build_task(name: str, cfg: Any, *, rank: int = 0, world_size: int = 1) -> TrainTask:
    """Instantiate the task named by the `task` config key ("vpog" or "module.path:ClassName")."""
    target = TASKS.get(name, name)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"task must be one of {sorted(TASKS)} or 'module.path:ClassName', got '{name}'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"task '{name}': cannot import {target} ({exc})") from exc
    if not (isinstance(cls, type) and issubclass(cls, TrainTask)):
        raise ValueError(f"task '{name}': {target} is not a TrainTask subclass")
    return cls(cfg, rank=rank, world_size=world_size)
