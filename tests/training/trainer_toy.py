"""A small TrainTask for the trainer tests: an MLP with dropout on a regression set with random augmentation.

Everything the fault-tolerance tests check is observable from files it writes in the run folder:
`trace_<tag>_rank<r>.jsonl` gets one line per micro-batch with the step, the dataset indices, the loss
and a checksum of the parameters the step started from. Faults are injected through `+toy.*` keys:

    toy.nan_at_step / toy.nan_rank      a NaN loss at that step on that rank only
    toy.crash_at_step                   os._exit(3) at that step on rank 0 in the first torchrun attempt
    toy.sleep_s                         sleep per step (gives a test time to send a signal)
    toy.num_samples / toy.batch_size    training set size, samples per rank per micro-batch
    toy.dropout                         dropout rate of the model
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from vpog.training.task import StepContext, StepOutput, TrainTask

DIM = 8


class ToyDataset(Dataset):
    """Sample i: a fixed input and target from i, plus augmentation noise from the global RNGs."""

    def __init__(self, n: int, offset: int = 0) -> None:
        self.n = n
        self.offset = offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(1000 + self.offset + i)
        x = torch.randn(DIM, generator=g)
        y = x.sum(0, keepdim=True) * 0.5
        noise = 0.05 * torch.randn(DIM) + 0.01 * float(np.random.randn())  # needs per-sample seeding
        return {"x": x + noise, "y": y, "index": torch.tensor(i)}


class ToyModel(nn.Module):
    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(DIM, 32), nn.GELU())
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.drop(self.encoder(x)))


class ToyTask(TrainTask):
    def __init__(self, cfg, *, rank=0, world_size=1) -> None:
        super().__init__(cfg, rank=rank, world_size=world_size)
        toy = dict(cfg.get("toy") or {}) if hasattr(cfg, "get") else {}
        self.num_samples = int(toy.get("num_samples", 20))
        self.bs = int(toy.get("batch_size", 3))
        self.nan_at_step = toy.get("nan_at_step")
        self.nan_rank = int(toy.get("nan_rank", 1))
        self.crash_at_step = toy.get("crash_at_step")
        self.sleep_s = float(toy.get("sleep_s", 0.0))
        self.dropout = float(toy.get("dropout", 0.2))
        self.tag = str(toy.get("tag", "run"))
        self.run_dir = Path(cfg["output_dir"]) / cfg["run_name"]
        self.trace = None

    def prepare_data(self) -> None:
        (self.run_dir / "prepared").write_text("1")

    def build_model(self) -> nn.Module:
        return ToyModel(self.dropout)

    def is_backbone(self, name: str) -> bool:
        return name.startswith("encoder.")

    def batch_size(self) -> int:
        return self.bs

    def train_dataset(self) -> Dataset:
        return ToyDataset(self.num_samples)

    def val_dataset(self) -> Dataset:
        return ToyDataset(7, offset=10_000)

    def train_step(self, model: nn.Module, batch, ctx: StepContext) -> StepOutput:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if (self.crash_at_step is not None and ctx.step == int(self.crash_at_step) and ctx.rank == 0
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            os._exit(3)
        x, y = batch["x"].to(ctx.device), batch["y"].to(ctx.device)
        with ctx.autocast():
            pred = model(x)
        loss = nn.functional.mse_loss(pred.float(), y)
        if self.nan_at_step is not None and ctx.step == int(self.nan_at_step) and ctx.rank == self.nan_rank:
            loss = loss * float("nan")
        if ctx.training:
            self._record(model, batch, ctx, loss)
        return StepOutput(loss=loss, terms={"loss_mse": loss.detach(), "pred_mean": pred.detach().float().mean()},
                          num_samples=len(x), num_images=len(x), num_skipped_samples=1 if ctx.step == 0 else 0)

    def _record(self, model, batch, ctx, loss) -> None:
        if self.trace is None:
            self.trace = open(self.run_dir / f"trace_{self.tag}_rank{ctx.rank}.jsonl", "a", buffering=1)
        checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
        self.trace.write(json.dumps({"step": ctx.step, "indices": batch["index"].tolist(),
                                     "loss": float(loss.detach()), "params": checksum, "pid": os.getpid()}) + "\n")

    def visualise(self, batch, output: StepOutput):
        return {"toy": np.zeros((4, 4, 3), dtype=np.uint8)}


def read_trace(run_dir: str | os.PathLike, tag: str, rank: int) -> list[dict]:
    path = Path(run_dir) / f"trace_{tag}_rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
