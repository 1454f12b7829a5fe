"""The distributed trainer: build, resume, train (step, log, validate, checkpoint), close.

One `Trainer` per process; `torchrun` (or `srun`) starts one process per GPU. What happens at each
optimiser step, on every rank:

1. `grad_accum_steps` micro-batches: the task's step (batch -> labels -> model -> losses) under
   autocast, backward (DDP all-reduces the gradients on the last micro-batch only);
2. unscale (fp16), global gradient norm, clipping;
3. ONE small all_reduce(MAX) of [non-finite loss or gradient, stop request]: every rank takes the same
   decision. A non-finite step is skipped everywhere (no update; counted; an abort after
   `faults.max_consecutive_skipped_steps` in a row). A stop request (SIGTERM / SIGUSR1 / SIGINT on any
   rank) ends the run after this step on every rank: checkpoint, exit 0, `scontrol requeue` for SIGUSR1
   on SLURM;
4. the update, the scheduler step, then on schedule: log, images, validation, checkpoint.

The learning-rate schedule and the data position advance on skipped steps too, so step k always
reads the same data and uses the same learning rate whatever happened before it.

Shutdown order (`close(abort=...)`, called by `vpog.train` in a finally, and by a failed constructor):

1. the DataLoader workers of the training iterator are stopped and joined;
2. the metric sinks close: the progress bar, TensorBoard's writer thread (flushed), metrics.jsonl;
3. the DDP wrapper (the only holder of the process group besides torch.distributed) is dropped and
   collected, then the process group is left, while Python is fully alive:
   - finished run or signal stop (`abort=False`): every rank has passed the final checkpoint's
     barrier, so no collective is pending; `destroy_process_group` frees the group and joins its
     worker threads;
   - exception (`abort=True`; also a second Ctrl-C): the group is aborted, bounded in time, so a
     collective that the other ranks will never join cannot keep this rank from exiting (torchrun then
     sees it fail and stops the others);
4. the previous SIGTERM / SIGUSR1 / SIGINT handlers come back (last, so that the SIGTERM torchrun sends
   to the other ranks when one rank failed only gets recorded while they tear down, and each rank
   still exits with its own code);
5. `python -m vpog.train` exits with the code (0 finished or stopped by a signal, 1 an error, 130 a
   second Ctrl-C). A failed run exits at once through `os._exit` after flushing the logs: interpreter
   finalisation takes long enough for torchrun's SIGTERM (sent to every rank as soon as one failed) to
   land in it and turn the rank's 1 into -15. So does any run that still has a process-group thread
   alive, because a gloo thread dropping a collective's tensors during finalisation aborts the process
   (SIGABRT, see `distributed._import_group_capturing_modules`).

References: pytorch/torchtitan `trainer.py` (Trainer with nested configs; the loop reads load, step,
save, validate), facebookresearch/vggt `training/trainer.py`, naver/dust3r `dust3r/training.py`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from vpog.config_schema import from_mapping, to_plain
from vpog.model.vpog import unwrap_model
from vpog.training import distributed as D
from vpog.training import signals
from vpog.training.checkpoint import CheckpointConfig, Checkpointer, load_checkpoint
from vpog.training.logger import LogConfig, MetricLogger, init_logger
from vpog.training.optim import OptimConfig, build_optimizer, build_scheduler
from vpog.training.rng import capture_rng_state, restore_rng_state, seed_all
from vpog.training.sampler import PositionedDataset, SampleKey, StreamBatchSampler
from vpog.training.task import StepContext, StepOutput, TrainTask, build_task

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many optimiser steps in a row had a non-finite loss or gradient."""


@dataclass(kw_only=True)
class FaultConfig:
    """Fault tolerance (mirrors `faults:` in train.yaml)."""

    max_consecutive_skipped_steps: int = 20
    """Abort (exit non-zero, no checkpoint) after this many non-finite steps in a row."""
    process_group_timeout_s: float = 1800.0
    """Collective timeout: a rank that died or hangs becomes an error on the others after this long."""

    def __post_init__(self) -> None:
        if self.max_consecutive_skipped_steps < 1:
            raise ValueError(f"faults.max_consecutive_skipped_steps must be >= 1, "
                             f"got {self.max_consecutive_skipped_steps}")
        if self.process_group_timeout_s <= 0:
            raise ValueError(f"faults.process_group_timeout_s must be > 0, got {self.process_group_timeout_s}")


@dataclass(kw_only=True)
class TrainerConfig:
    """The trainer's part of train.yaml; `model`, `data` and `loss` belong to the task."""

    task: str = "vpog"
    """Which TrainTask: "vpog" or "module.path:ClassName"."""
    seed: int = 0
    """Seeds model initialisation, data order and augmentation."""
    output_dir: str = "outputs"
    """Runs go to `<output_dir>/<run_name>/` (shared by all ranks: checkpoints, logs, config)."""
    run_name: str = "vpog"
    """Run folder name; a restart with the same name resumes."""
    ops_backend: str = "auto"
    """`ops.backend`: auto | reference | triton | cuda | cpu (reference switches every fast op off)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    log: LogConfig = field(default_factory=LogConfig)
    machine: D.MachineConfig = field(default_factory=D.MachineConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    @classmethod
    def from_config(cls, cfg: Any) -> TrainerConfig:
        """From the composed DictConfig (or a plain dict); unknown keys in the trainer's sections raise."""
        raw = to_plain(cfg)
        kwargs: dict[str, Any] = {name: from_mapping(sec_cls, raw.get(name), name)
                                  for name, sec_cls in (("optim", OptimConfig), ("checkpoint", CheckpointConfig),
                                                        ("faults", FaultConfig), ("log", LogConfig),
                                                        ("machine", D.MachineConfig))}
        kwargs.update({name: raw[name] for name in ("task", "seed", "output_dir", "run_name") if name in raw})
        kwargs["ops_backend"] = (raw.get("ops") or {}).get("backend", "auto")
        return cls(**kwargs)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB (host RSS)


class Trainer:
    """Builds everything from the composed config, then `train()`; always `close()` (in a finally)."""

    def __init__(self, cfg: Any, task: TrainTask | None = None) -> None:
        self._closed = False
        try:
            self._build(cfg, task)
        except BaseException:
            self.close(abort=True)
            raise

    def _build(self, cfg: Any, task: TrainTask | None) -> None:
        self.cfg = cfg
        self.config = TrainerConfig.from_config(cfg)
        c = self.config
        from vpog._backend import set_default_backend

        set_default_backend(c.ops_backend)
        self.ctx = D.init_distributed(c.machine, c.faults.process_group_timeout_s)
        init_logger(self.ctx.rank)
        self.stop = signals.StopRequest().install()
        self.device = self.ctx.device
        self.run_dir = c.run_dir
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._save_config()
        log.info("run %s: %d rank(s), device %s, precision %s, ops.backend=%s", self.run_dir,
                 self.ctx.world_size, self.device, self.ctx.autocast_dtype or "fp32", c.ops_backend)

        self.task = task or build_task(c.task, cfg, rank=self.ctx.rank, world_size=self.ctx.world_size)
        if self.ctx.is_main:
            self.task.prepare_data()
        D.barrier()

        seed_all(c.seed, self.device)  # the same initial weights on every rank
        model = self.task.build_model().to(self.device)
        if c.checkpoint.init_from:
            state = load_checkpoint(c.checkpoint.init_from)
            model.load_state_dict(state["model"])
            log.info("initialised the model from %s", c.checkpoint.init_from)
        self.model: nn.Module = model
        if self.ctx.world_size > 1:
            self.model = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.find_unused_parameters)
        self.optimizer = build_optimizer(model, c.optim, self.task.is_backbone, self.task.no_decay_names)
        self.scheduler = build_scheduler(self.optimizer, c.optim)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.ctx.autocast_dtype == torch.float16)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", c.checkpoint, is_main=self.ctx.is_main)

        self.step = 0
        self.samples_consumed = 0
        self.skipped_steps = 0
        self.skipped_samples = 0
        self.consecutive_skipped = 0
        seed_all(c.seed + 1 + 7919 * self.ctx.rank, self.device)  # per-rank dropout etc.
        self.resumed_from = self._resume()

        self.batch_size = self.task.batch_size()
        train_set = self.task.train_dataset()
        order = self.task.epoch_order(train_set)
        num, order_fn = order if order is not None else (len(train_set), None)
        self.sampler = StreamBatchSampler(num, self.batch_size, self.ctx.rank, self.ctx.world_size, seed=c.seed,
                                          start=self.samples_consumed, order=order_fn)
        self.train_loader = self._loader(self._positioned(train_set), self.sampler)
        self._train_iter = None
        self.val_set = self.task.val_dataset() if c.log.val_every_steps > 0 else None
        self.metrics = MetricLogger(self.run_dir, c.log, c.optim.max_steps, start_step=self.step,
                                    enabled=self.ctx.is_main)
        if self.resumed_from is not None:
            self.metrics.event(self.step, "resume", checkpoint=str(self.resumed_from),
                               samples_consumed=self.samples_consumed)

    # -- setup helpers -------------------------------------------------------------------------

    def _save_config(self) -> None:
        """The resolved config of the run: config.yaml (with omegaconf) or config.json."""
        from omegaconf import DictConfig, OmegaConf

        if isinstance(self.cfg, DictConfig):
            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        else:
            import json

            (self.run_dir / "config.json").write_text(json.dumps(self.cfg, indent=1, default=str))

    def _positioned(self, dataset) -> PositionedDataset:
        return PositionedDataset(dataset, self.config.seed, pass_seed=self.task.pass_sample_seed)

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        extra_init = self.task.worker_init_fn()

        def worker_init(worker_id: int) -> None:
            signals.ignore_stop_signals()
            if extra_init is not None:
                extra_init(worker_id)

        nw = self.config.machine.num_workers
        return DataLoader(
            dataset, batch_sampler=batch_sampler, num_workers=nw, collate_fn=self.task.collate,
            pin_memory=self.device.type == "cuda", worker_init_fn=worker_init if nw > 0 else None,
            generator=torch.Generator().manual_seed(self.config.seed + 1000003 * self.ctx.rank),
            prefetch_factor=4 if nw > 0 else None, persistent_workers=False,
        )

    def _resume(self) -> Path | None:
        """Load the newest valid checkpoint (rank 0 chooses, every rank loads the same file)."""
        found = self.checkpointer.latest() if self.ctx.is_main else None
        path = D.broadcast_object(str(found[0]) if found else None)
        if path is None:
            return None
        state = found[1] if found else load_checkpoint(path)
        unwrap_model(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        data = state["data"]
        self.samples_consumed = int(data["samples_consumed"])
        counters = state["counters"]
        self.skipped_steps = int(counters["skipped_steps"])
        self.consecutive_skipped = int(counters["consecutive_skipped"])
        rngs, skipped = state["rng"], counters["skipped_samples"]
        task_states = state.get("task") or [{}]
        same_world = len(rngs) == self.ctx.world_size
        self.task.load_state_dict(task_states[self.ctx.rank if same_world else 0])
        if same_world:
            restore_rng_state(rngs[self.ctx.rank], self.device)
            self.skipped_samples = int(skipped[self.ctx.rank])
        else:
            self.skipped_samples = int(sum(skipped)) if self.ctx.is_main else 0
            log.warning("checkpoint from %d rank(s), now %d: random streams reseeded (the data position is "
                        "kept; the run is no longer bit-identical to an uninterrupted one)",
                        len(rngs), self.ctx.world_size)
            seed_all(self.config.seed + 1 + 7919 * self.ctx.rank + 104729 * self.step, self.device)
        log.info("resumed from %s at step %d (%d samples consumed)", path, self.step, self.samples_consumed)
        return Path(path)

    # -- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The training state; collective (every rank must call it): per-rank RNG states are gathered."""
        per_rank = D.all_gather_object({"rng": capture_rng_state(self.device), "task": self.task.state_dict(),
                                        "skipped_samples": self.skipped_samples})
        if not self.ctx.is_main:
            return {}
        cfg = to_plain(self.cfg)
        return {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": [r["rng"] for r in per_rank],
            "task": [r["task"] for r in per_rank],
            "data": {"samples_consumed": self.samples_consumed, "seed": self.config.seed,
                     "batch_size": self.batch_size, "world_size": self.ctx.world_size},
            "counters": {"skipped_steps": self.skipped_steps, "consecutive_skipped": self.consecutive_skipped,
                         "skipped_samples": [r["skipped_samples"] for r in per_rank]},
            "world_size": self.ctx.world_size,
            "config": cfg,
        }

    def save_checkpoint(self) -> None:
        """Collective: gather, rank 0 writes atomically, everyone waits for the file to exist."""
        state = self.state_dict()
        self.checkpointer.save(self.step, state)
        D.barrier()
        self._last_saved = self.step

    # -- training ------------------------------------------------------------------------------

    def _next_batch(self):
        if self._train_iter is None:
            self._train_iter = iter(self.train_loader)
        return next(self._train_iter)

    def _context(self, training: bool = True) -> StepContext:
        return StepContext(device=self.device, autocast_dtype=self.ctx.autocast_dtype, step=self.step,
                           rank=self.ctx.rank, world_size=self.ctx.world_size, training=training)

    def train_step(self) -> dict[str, Any]:
        """One optimiser step (all micro-batches); returns what the loop logs. Collective."""
        c = self.config
        accum = c.optim.grad_accum_steps
        self.model.train()
        data_time = 0.0
        loss_sum = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        n_samples = n_images = n_skipped = 0
        out: StepOutput | None = None
        batch = None
        for micro in range(accum):
            t0 = time.perf_counter()
            batch = self._next_batch()
            data_time += time.perf_counter() - t0
            sync = micro == accum - 1 or not isinstance(self.model, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.model.no_sync():
                out = self.task.train_step(self.model, batch, self._context())
                loss = out.loss.float() / accum
                self.scaler.scale(loss).backward()
            loss_sum += loss.detach()
            for k, v in out.terms.items():
                terms[k] = terms.get(k, 0.0) + v.detach().float().reshape(()) / accum
            n_samples += out.num_samples
            n_images += out.num_images
            n_skipped += out.num_skipped_samples
        self.samples_consumed += accum * self.batch_size * self.ctx.world_size

        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = c.optim.grad_clip if c.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True).float()
        flags = torch.stack([
            (~torch.isfinite(loss_sum) | ~torch.isfinite(grad_norm)).float(),
            torch.tensor(float(self.stop.code), device=self.device),
        ])
        D.all_reduce_max(flags)
        keys = sorted(terms)
        term_values = [terms[k].reshape(1) for k in keys]
        bad, stop_code, loss_value, norm_value, *term_list = torch.cat(  # the step's one host sync
            [flags, loss_sum.view(1), grad_norm.view(1), *term_values]).tolist()
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            self.skipped_steps += 1
            self.consecutive_skipped += 1
            log.warning("step %d: non-finite loss or gradient on some rank (loss %s, grad norm %s here); "
                        "skipped on every rank (%d in a row, %d in total)", self.step, loss_value, norm_value,
                        self.consecutive_skipped, self.skipped_steps)
            self.metrics.event(self.step, "skipped_step", loss=loss_value, grad_norm=norm_value)
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive_skipped = 0
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        with warnings.catch_warnings():  # a skipped first step makes torch think the order is wrong; it is not
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.scheduler.step()
        self.step += 1
        self.skipped_samples += n_skipped
        if self.consecutive_skipped >= c.faults.max_consecutive_skipped_steps:
            raise NonFiniteLossError(f"{self.consecutive_skipped} optimiser steps in a row had a non-finite loss "
                                     f"or gradient (last at step {self.step - 1}); aborting")
        return {"loss": loss_value, "grad_norm": norm_value, "terms": dict(zip(keys, term_list)),
                "skipped": bool(bad),
                "stop_code": int(stop_code), "lrs": lrs, "data_time": data_time, "samples": n_samples,
                "images": n_images, "batch": batch, "output": out}

    def train(self) -> int:
        """Run to `optim.max_steps` or a stop signal; returns the process exit code (0)."""
        c = self.config
        if self.step >= c.optim.max_steps:
            log.info("the run is already at step %d of %d: nothing to do", self.step, c.optim.max_steps)
            return 0
        self._last_saved = self.step if self.resumed_from is not None else -1
        window = _Window(self.device)
        t_last = time.perf_counter()
        stop_code = signals.NONE
        log.info("training from step %d to %d (global batch %d)", self.step, c.optim.max_steps,
                 self.batch_size * self.ctx.world_size * c.optim.grad_accum_steps)
        while self.step < c.optim.max_steps:
            r = self.train_step()
            now = time.perf_counter()
            window.add(r, now - t_last)
            t_last = now
            stop_code = r["stop_code"]
            self.metrics.progress(self.step, r["loss"], window.last_images_per_s * self.ctx.world_size)
            if self.step % c.log.every_steps == 0:
                self._log_window(window, r["lrs"])
            if c.log.image_every_steps and self.step % c.log.image_every_steps == 0 and self.ctx.is_main:
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    self.metrics.images(self.step, self.task.visualise(r["batch"], r["output"]))
            r = None  # free the batch and the outputs before validation
            if self.val_set is not None and self.step % c.log.val_every_steps == 0:
                self.validate()
            if self.checkpointer.due(self.step):
                self.save_checkpoint()
            if stop_code != signals.NONE:
                break
        if self.step >= c.optim.max_steps and self.val_set is not None and self.step % c.log.val_every_steps:
            self.validate()
        if self._last_saved != self.step:
            self.save_checkpoint()
        if stop_code != signals.NONE:
            name = signals.CODE_NAMES[stop_code]
            log.info("stopped by %s at step %d; checkpoint saved", name, self.step)
            self.metrics.event(self.step, "stop", signal=name)
            if (stop_code == signals.SIGUSR1_STOP and self.config.machine.requeue_on_signal
                    and self.ctx.is_main):
                signals.requeue_slurm_job()
        else:
            log.info("finished at step %d (%d skipped steps; %d skipped samples on this rank)", self.step,
                     self.skipped_steps, self.skipped_samples)
        self.metrics.flush()
        return 0

    def _log_window(self, window: _Window, lrs: list[float]) -> None:
        """Average the window over ranks (collective) and log it on rank 0."""
        values = window.reduce(self.ctx.world_size, {"skipped_samples": self.skipped_samples})
        values["lr"] = max(lrs)
        values["lr_backbone"] = min(lrs)
        values["peak_memory_gib"] = _peak_memory_gib(self.device)
        values["skipped_steps"] = self.skipped_steps
        values["samples_consumed"] = self.samples_consumed
        self.metrics.scalars(self.step, values)
        window.reset()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation on the held-out set (every rank takes its share; rank 0 logs). Keeps the RNG streams."""
        c = self.config
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model = unwrap_model(self.model)
            model.eval()
            # one pass at most: this rank's share (every world_size-th sample), up to val_batches batches;
            # no wrap-around, so a small held-out set is not counted several times
            share = list(range(self.ctx.rank, len(self.val_set), self.ctx.world_size))
            batches = [[SampleKey(i, i) for i in share[j:j + self.batch_size]]
                       for j in range(0, len(share), self.batch_size)][:c.log.val_batches]
            loader = self._loader(self._positioned(self.val_set), batches)
            values: dict[str, list[torch.Tensor]] = {}
            t0 = time.perf_counter()
            for batch in loader:
                for k, v in self.task.val_step(model, batch, self._context(training=False)).items():
                    values.setdefault(k, []).append(v.detach().float().reshape(-1).cpu())
            del loader
            model.train()
        local = {k: torch.cat(v) for k, v in values.items()}
        gathered = D.all_gather_object(local)
        summary: dict[str, float] = {}
        if self.ctx.is_main:
            names = sorted({k for g in gathered for k in g})  # a rank with no validation batch sends {}
            merged = {k: torch.cat([g[k] for g in gathered if k in g]) for k in names}
            summary = self.task.summarise_val(merged)
            summary["time_s"] = time.perf_counter() - t0
            self.metrics.scalars(self.step, summary, kind="val")
        return summary

    def close(self, abort: bool = False) -> None:
        """Stop loader workers, close the logs, leave the process group, restore the signal handlers (in
        that order; see the module docstring). `abort=True` on an error path. Idempotent; the unwrapped
        model stays usable."""
        if self._closed:
            return
        self._closed = True
        iterator, self._train_iter = getattr(self, "_train_iter", None), None
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        if hasattr(self, "metrics"):
            self.metrics.close()
        if hasattr(self, "model"):
            self.model = unwrap_model(self.model)  # DDP holds the process group
        timeout = self.config.faults.process_group_timeout_s if hasattr(self, "config") else 60.0
        D.destroy_distributed(abort=abort, timeout_s=min(timeout, 60.0))
        if hasattr(self, "stop"):  # last: torchrun's SIGTERM to the other ranks after one failed must not
            self.stop.uninstall()  # kill them mid-teardown (-15); they finish and exit with their own code


class _Window:
    """Running sums between two log lines."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.last_images_per_s = 0.0
        self.reset()

    def reset(self) -> None:
        self.steps = 0
        self.time = 0.0
        self.data_time = 0.0
        self.samples = 0
        self.images = 0
        self.loss = 0.0
        self.grad_norm = 0.0
        self.finite_steps = 0
        self.terms: dict[str, float] = {}

    def add(self, r: dict[str, Any], step_time: float) -> None:
        self.steps += 1
        self.time += step_time
        self.data_time += r["data_time"]
        self.samples += r["samples"]
        self.images += r["images"]
        self.last_images_per_s = r["images"] / step_time if step_time > 0 else 0.0
        if not r["skipped"]:
            self.finite_steps += 1
            self.loss += r["loss"]
            self.grad_norm += r["grad_norm"]
            for k, v in r["terms"].items():
                self.terms[k] = self.terms.get(k, 0.0) + float(v)

    def reduce(self, world_size: int, totals: dict[str, float]) -> dict[str, float]:
        """Means over the window and over ranks, plus `totals` summed over ranks (one all_reduce SUM;
        term keys must match across ranks)."""
        keys = sorted(self.terms)
        tkeys = sorted(totals)
        local = [self.loss, self.grad_norm, float(self.finite_steps), float(self.samples), float(self.images),
                 self.time, self.data_time] + [float(totals[k]) for k in tkeys] + [self.terms[k] for k in keys]
        t = D.all_reduce_sum(torch.tensor(local, dtype=torch.float64, device=self.device)).tolist()
        loss, gnorm, finite, samples, images, time_sum, data_time = t[:7]
        summed, t = t[7:7 + len(tkeys)], t[7 + len(tkeys):]
        n = max(finite, 1.0)
        wall = time_sum / world_size  # the ranks run in lockstep: mean wall time of the window
        out = {"loss": loss / n if finite else float("nan"), "grad_norm": gnorm / n if finite else float("nan"),
               "images_per_s": images / wall if wall > 0 else 0.0,
               "samples_per_s": samples / wall if wall > 0 else 0.0,
               "data_time_s": data_time / world_size / max(self.steps, 1),
               "step_time_s": wall / max(self.steps, 1)}
        for k, v in zip(keys, t):
            out[k] = v / n
        out.update(zip(tkeys, summed))
        return out
