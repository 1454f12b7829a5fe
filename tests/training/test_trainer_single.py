"""The Trainer in one process with the toy task: abort after repeated NaNs, init_from, gradient accumulation,
a finished run restarted, and a stop request honoured at the step boundary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_toy import ToyTask, read_trace  # noqa: E402

from vpog.training import signals  # noqa: E402
from vpog.training.checkpoint import list_checkpoints, load_checkpoint  # noqa: E402
from vpog.training.logger import read_metrics  # noqa: E402
from vpog.training.trainer import NonFiniteLossError, Trainer  # noqa: E402


def _cfg(tmp_path, run, optim=None, toy=None, **sections):
    cfg = {
        "task": "toy", "seed": 0, "output_dir": str(tmp_path), "run_name": run,
        "optim": {"max_steps": 6, "warmup_steps": 1, **(optim or {})},
        "checkpoint": {"every_steps": 3},
        "log": {"every_steps": 2, "val_every_steps": 0, "image_every_steps": 0, "tensorboard": False,
                "progress_bar": "false"},
        "machine": {"device": "cpu", "num_workers": 0},
        "toy": {"tag": run, **(toy or {})},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def _run(cfg):
    trainer = Trainer(cfg, task=ToyTask(cfg))
    try:
        return trainer, trainer.train()
    finally:
        trainer.close()


class _AlwaysNaN(ToyTask):
    def train_step(self, model, batch, ctx):
        out = super().train_step(model, batch, ctx)
        out.loss = out.loss * float("nan")
        return out


def test_abort_after_too_many_nonfinite_steps(tmp_path):
    cfg = _cfg(tmp_path, "nan", faults={"max_consecutive_skipped_steps": 3})
    trainer = Trainer(cfg, task=_AlwaysNaN(cfg))
    try:
        with pytest.raises(NonFiniteLossError, match="3 optimiser steps in a row"):
            trainer.train()
        assert trainer.skipped_steps == 3 and trainer.step == 3
    finally:
        trainer.close()
    assert not list_checkpoints(tmp_path / "nan" / "checkpoints")  # nothing saved from a broken run


def test_init_from_starts_a_new_run_from_weights(tmp_path):
    _run(_cfg(tmp_path, "first"))
    ckpt = list_checkpoints(tmp_path / "first" / "checkpoints")[0][1]
    weights = load_checkpoint(ckpt)["model"]
    trainer, rc = _run(_cfg(tmp_path, "second", checkpoint={"init_from": str(ckpt)}))
    assert rc == 0
    first_step = read_trace(tmp_path / "second", "second", 0)[0]
    assert first_step["step"] == 0  # a new run, not a resume
    assert first_step["params"] == pytest.approx(float(sum(v.double().sum() for v in weights.values())), rel=1e-12)


def test_gradient_accumulation_matches_the_big_batch(tmp_path):
    """2 micro-batches of 3 = one batch of 6 (dropout off: the toy model in eval mode has the same
    function; here the comparison is on the first update, whose data is the same 6 samples)."""
    traces = {}
    for run, bs, accum in (("big", 6, 1), ("accum", 3, 2)):
        cfg = _cfg(tmp_path, run, optim={"grad_accum_steps": accum, "max_steps": 2, "grad_clip": 0.0},
                   toy={"batch_size": bs, "dropout": 0.0})
        _run(cfg)
        traces[run] = read_trace(tmp_path / run, run, 0)
    big, acc = traces["big"], traces["accum"]
    assert [r["step"] for r in acc] == [0, 0, 1, 1]
    assert acc[0]["indices"] + acc[1]["indices"] == big[0]["indices"]
    assert acc[2]["params"] == pytest.approx(big[1]["params"], rel=1e-6, abs=1e-6)


def test_finished_run_restarts_as_a_no_op_and_stop_request_checkpoints(tmp_path):
    _run(_cfg(tmp_path, "done"))
    trainer, rc = _run(_cfg(tmp_path, "done"))
    assert rc == 0 and trainer.step == 6

    cfg = _cfg(tmp_path, "stop")
    trainer = Trainer(cfg, task=ToyTask(cfg))
    try:
        trainer.stop.request(signals.SIGTERM_STOP)  # as the SIGTERM handler does
        assert trainer.train() == 0
        assert trainer.step == 1
    finally:
        trainer.close()
    assert [s for s, _ in list_checkpoints(tmp_path / "stop" / "checkpoints")] == [1]
    stop = [e for e in read_metrics(tmp_path / "stop" / "metrics.jsonl", "event") if e["event"] == "stop"]
    assert stop[0]["signal"] == "SIGTERM"
    assert torch.get_default_dtype() == torch.float32


class _ValRecorder(ToyTask):
    seen: list[int]

    def val_step(self, model, batch, ctx):
        self.seen = getattr(self, "seen", []) + batch["index"].tolist()
        return super().val_step(model, batch, ctx)


def test_validation_reads_a_small_held_out_set_once(tmp_path):
    """7 held-out samples, batch 3, val_batches 50: one pass (3 batches), no wrap-around repeats."""
    cfg = _cfg(tmp_path, "val", optim={"max_steps": 2}, log={"val_every_steps": 2, "val_batches": 50})
    task = _ValRecorder(cfg)
    trainer = Trainer(cfg, task=task)
    try:
        assert trainer.train() == 0
    finally:
        trainer.close()
    assert sorted(task.seen) == list(range(7))
    val = read_metrics(tmp_path / "val" / "metrics.jsonl", "val")
    assert [r["step"] for r in val] == [2]
