"""What a person watching a run sees: a progress bar, log lines, TensorBoard, a JSON-lines file.

Only rank 0 writes. `MetricLogger` fans one call out to:

- a tqdm progress bar on a terminal (step, loss, images/s, ETA), or, when stderr is not a terminal
  (SLURM log files), a log line every `log.every_steps` with the same numbers;
- TensorBoard scalars and images under `<run>/tensorboard/`;
- `<run>/metrics.jsonl`: one JSON object a line, `{"kind": "train" | "val" | "event", "step": ..., ...}`,
  easy to read back with pandas or `json.loads`.

References: pytorch/torchtitan `tools/logging.py` (one `init_logger` with a fixed format) and
`components/metrics.py` (one logger fanning out to TensorBoard and the console).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class LogConfig:
    """Logging cadence and sinks (mirrors `log:` in train.yaml)."""

    every_steps: int = 10
    """Write scalars (TensorBoard, metrics.jsonl, log line) every this many optimiser steps."""
    image_every_steps: int = 200
    """Write flow and correspondence images every this many steps (0: never)."""
    val_every_steps: int = 500
    """Validate on the held-out objects every this many steps (0: never; also once at the end)."""
    val_batches: int = 8
    """Batches per rank of each validation."""
    tensorboard: bool = True
    """Write TensorBoard event files (needs the tensorboard package)."""
    progress_bar: str = "auto"
    """auto (a bar when stderr is a terminal) | true | false."""

    def __post_init__(self) -> None:
        if self.every_steps <= 0:
            raise ValueError(f"log.every_steps must be > 0, got {self.every_steps}")
        for name in ("image_every_steps", "val_every_steps", "val_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"log.{name} must be >= 0, got {getattr(self, name)}")
        self.progress_bar = str(self.progress_bar).lower()
        if self.progress_bar not in ("auto", "true", "false"):
            raise ValueError(f"log.progress_bar must be auto, true or false, got '{self.progress_bar}'")


def init_logger(rank: int = 0, level: int = logging.INFO) -> None:
    """Configure the root logger once: rank 0 at `level`, other ranks warnings only, rank in the prefix."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_vpog", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._vpog = True  # type: ignore[attr-defined]
    prefix = f"[rank{rank}] " if rank else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else max(level, logging.WARNING))


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, (np.floating, np.integer)):
        return _jsonable(value.item())
    return value


class MetricLogger:
    """Rank-0 sink for scalars, images and events; on other ranks every method does nothing."""

    def __init__(self, run_dir: str | os.PathLike, config: LogConfig, max_steps: int, start_step: int = 0,
                 enabled: bool = True) -> None:
        self.config = config
        self.enabled = enabled
        self.max_steps = max_steps
        self.run_dir = Path(run_dir)
        self._bar = None
        self._tb = None
        self._jsonl = None
        self._t_start = time.perf_counter()
        self._start_step = start_step
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=start_step or None)
        use_bar = config.progress_bar == "true" or (config.progress_bar == "auto" and sys.stderr.isatty())
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                             smoothing=0.05)

    # -- scalars -------------------------------------------------------------------------------

    def eta(self, step: int) -> float:
        done = step - self._start_step
        if done <= 0:
            return float("nan")
        return (time.perf_counter() - self._t_start) / done * (self.max_steps - step)

    def progress(self, step: int, loss: float, images_per_s: float) -> None:
        """Advance the bar to `step` (cheap; call every step)."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"loss {loss:.4f}, {images_per_s:.1f} img/s", refresh=False)

    def scalars(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        """Write `values` to TensorBoard (`<kind>/<name>`) and metrics.jsonl; a log line without a bar."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        if self._tb is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self._tb.add_scalar(f"{kind}/{k}".replace(" ", "_"), v, step)
        self._write({"kind": kind, "step": step, "time": time.time(), **values})
        if self._bar is None or kind != "train":
            keys = ("loss", "lr", "grad_norm", "images_per_s") if kind == "train" else sorted(values)
            shown = ", ".join(f"{k} {values[k]:.4g}" for k in keys if k in values)
            eta = f", ETA {format_duration(self.eta(step))}" if kind == "train" else ""
            msg = f"{kind} step {step}/{self.max_steps}: {shown}{eta}"
            if self._bar is not None:
                self._bar.write(msg)
            else:
                log.info(msg)

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        """Write HxWx3 uint8 images to TensorBoard (`images/<name>`)."""
        if not self.enabled or self._tb is None:
            return
        for name, img in images.items():
            self._tb.add_image(f"images/{name}", np.asarray(img), step, dataformats="HWC")

    def event(self, step: int, name: str, **fields: Any) -> None:
        """A one-off record (resume, skipped step, stop, ...) in metrics.jsonl."""
        if not self.enabled:
            return
        self._write({"kind": "event", "step": step, "time": time.time(), "event": name, **fields})

    def _write(self, record: dict[str, Any]) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()
        if self._jsonl is not None:
            self._jsonl.flush()
            os.fsync(self._jsonl.fileno())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


def read_metrics(path: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file (optionally only one `kind`)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                if kind is None or rec.get("kind") == kind:
                    out.append(rec)
    return out
