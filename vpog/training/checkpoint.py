"""Atomic, checksummed training checkpoints: keep the last k, resume from the newest valid one.

Layout of a run's checkpoint folder (shared by all ranks; it must be on a filesystem every node sees):

    ckpt_000001200.pt     torch.save of the training state (model, optimiser, scheduler, scaler,
                          per-rank RNG states, data position, counters, resolved config)
    ckpt_000001200.json   {"step", "sha256", "bytes", "format", "time"}: written after the .pt

A checkpoint is written to a temporary file in the same folder, flushed, fsync'ed and renamed over
its final name (`os.replace` is atomic on POSIX), then the manifest the same way, then the folder is
fsync'ed. So a crash at any point leaves either a complete checkpoint or one without a manifest,
which counts as incomplete. When loading, checkpoints are tried newest first; one whose manifest is
missing or unreadable, whose size or SHA-256 differs from the manifest, or that `torch.load` rejects,
is skipped with a warning and the previous one is tried.

References: pytorch/torchtitan `components/checkpointer/base.py` (enable checked once in save/load,
work delegated to hooks); VGGT and DUSt3R trainers (what a training checkpoint holds; theirs are not
atomic and resume per epoch only).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


@dataclass(kw_only=True)
class CheckpointConfig:
    """When to save, how many to keep, whether to resume (mirrors `checkpoint:` in train.yaml)."""

    every_steps: int = 200
    """Save every this many optimiser steps (and always at a signal stop and at the end)."""
    keep_last: int = 3
    """How many of the newest checkpoints to keep (>= 2, so a corrupt newest one has a fallback)."""
    resume: bool = True
    """Resume from the newest valid checkpoint of the run folder when there is one."""
    init_from: str | None = None
    """A checkpoint file to start a *new* run from (model weights only); ignored when resuming."""

    def __post_init__(self) -> None:
        if self.every_steps <= 0:
            raise ValueError(f"checkpoint.every_steps must be > 0, got {self.every_steps}")
        if self.keep_last < 2:
            raise ValueError(f"checkpoint.keep_last must be >= 2 (a fallback for a corrupt newest), "
                             f"got {self.keep_last}")


class CheckpointError(RuntimeError):
    """A checkpoint file is incomplete or corrupt."""


class _HashingWriter:
    """File wrapper that hashes and counts what passes through `write`."""

    def __init__(self, f) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.bytes += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, write_fn) -> Any:
    """Call write_fn(file) on a temp file next to `path`, fsync, rename over `path`; returns write_fn's result."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            result = write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return result


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:09d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """[(step, path)] of the checkpoint files in `directory`, newest (highest step) first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for p in d.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def save_checkpoint(directory: str | os.PathLike, step: int, state: dict[str, Any]) -> Path:
    """Write `state` as the checkpoint of `step` atomically (payload, then manifest); returns its path."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(d, step)
    payload = dict(state)
    payload["format"] = FORMAT_VERSION
    payload["step"] = step

    def write(f):
        w = _HashingWriter(f)
        torch.save(payload, w)
        return w

    w = _write_atomic(path, write)
    manifest = {"step": step, "sha256": w.sha.hexdigest(), "bytes": w.bytes, "format": FORMAT_VERSION,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write_atomic(path.with_suffix(".json"), lambda f: f.write(json.dumps(manifest).encode()))
    _fsync_dir(d)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and verify one checkpoint (manifest, size, SHA-256, then torch.load on CPU).

    Raises CheckpointError saying what is wrong.
    """
    path = Path(path)
    manifest_path = path.with_suffix(".json")
    if not manifest_path.exists():
        raise CheckpointError(f"{path.name}: no manifest {manifest_path.name} (the save did not finish)")
    try:
        manifest = json.loads(manifest_path.read_text())
        want_sha, want_bytes = manifest["sha256"], int(manifest["bytes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path.name}: unreadable manifest ({exc})") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path.name}: cannot read ({exc})") from None
    if len(data) != want_bytes:
        raise CheckpointError(f"{path.name}: {len(data)} bytes, the manifest says {want_bytes} (truncated?)")
    if hashlib.sha256(data).hexdigest() != want_sha:
        raise CheckpointError(f"{path.name}: SHA-256 differs from the manifest (corrupt)")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path.name}: torch.load failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path.name}: not a vpog training checkpoint of format {FORMAT_VERSION}")
    return state


def find_latest_valid(directory: str | os.PathLike) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint of `directory` that verifies and loads, as (path, state); None if there is none.

    Each newer one that fails is logged as a warning naming the problem.
    """
    for _, path in list_checkpoints(directory):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s, falling back to the previous one", exc)
    return None


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the `keep_last` newest checkpoints (payload and manifest); returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    removed = []
    for _, path in list_checkpoints(directory)[keep_last:]:
        for p in (path, path.with_suffix(".json")):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def remove_stale_temporaries(directory: str | os.PathLike) -> None:
    """Delete temp files left by a save that was killed midway (call once, on rank 0, at start)."""
    d = Path(directory)
    if d.is_dir():
        for p in d.glob(".ckpt_*.tmp-*"):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


class Checkpointer:
    """Saves on rank 0, prunes to `keep_last`, and finds the newest valid checkpoint to resume from.

    Collective steps (gathering per-rank state, agreeing on the checkpoint to load) are the trainer's;
    this class only touches files.
    """

    def __init__(self, directory: str | os.PathLike, config: CheckpointConfig, is_main: bool = True) -> None:
        self.directory = Path(directory)
        self.config = config
        self.is_main = is_main
        if is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.directory)

    def due(self, step: int) -> bool:
        return step > 0 and step % self.config.every_steps == 0

    def save(self, step: int, state: dict[str, Any]) -> Path | None:
        """Rank 0 writes the checkpoint of `step` and prunes; other ranks return None."""
        if not self.is_main:
            return None
        t0 = time.perf_counter()
        path = save_checkpoint(self.directory, step, state)
        prune_checkpoints(self.directory, self.config.keep_last)
        log.info("saved checkpoint %s in %.1f s", path, time.perf_counter() - t0)
        return path

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest valid checkpoint when resuming is enabled, else None."""
        if not self.config.resume:
            return None
        return find_latest_valid(self.directory)
