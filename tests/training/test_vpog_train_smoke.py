"""End to end on the CPU: a tiny synthetic set, the tiny VPOG model, the real training step.

batch -> flow labels -> model -> classification + flow + EPro-PnP losses, a few optimiser steps through
the Trainer, validation on the held-out object, images, a checkpoint that `python -m vpog.evaluate`
reads; and the same first step with `ops.backend=reference` gives the same loss.
"""

from __future__ import annotations

import math

import pytest
import torch
from synthetic_sets import render_training_set


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """3 procedural objects, 6 scenes, level-0 templates; rendered in a subprocess (EGL's Mesa and Triton's
    LLVM in one process can crash at Triton's import)."""
    return render_training_set(tmp_path_factory.mktemp("vpog_set"))


def _config(tiny_set, out_dir, run, *extra):
    from vpog.cli import load_config

    return load_config("train", [
        f"output_dir={out_dir}", f"run_name={run}", "data.synthesize=null",
        f"data.train_datasets.0.root={tiny_set}", f"data.train_datasets.0.templates={tiny_set}/templates",
        "data.batch_size=2", "optim.max_steps=2", "optim.warmup_steps=1", "log.every_steps=1",
        "log.val_every_steps=2", "log.val_batches=1", "log.image_every_steps=2", "machine.num_workers=0",
        "pnp.mc_samples=32", "loss.pnp_points=64", "val.pose_metrics=false", "split.heldout_objects=[3]", *extra,
    ])


def test_vpog_training_steps_validation_images_checkpoint(tiny_set, tmp_path):
    from vpog.training.checkpoint import list_checkpoints
    from vpog.training.logger import read_metrics
    from vpog.training.trainer import Trainer

    trainer = Trainer(_config(tiny_set, tmp_path, "smoke"))
    try:
        assert trainer.task._held_out() == ([1, 2], [3])
        assert trainer.train() == 0
    finally:
        trainer.close()
    run = tmp_path / "smoke"
    train = read_metrics(run / "metrics.jsonl", "train")
    assert [r["step"] for r in train] == [1, 2]
    for key in ("loss", "loss_cls", "loss_flow_nll", "loss_flow_invisible", "loss_pnp", "loss_reg", "cls_acc",
                "grad_norm", "images_per_s", "labels_seen_frac", "pnp_valid_frac"):
        assert math.isfinite(train[-1][key]), key
    assert train[-1]["images_per_s"] > 0 and train[-1]["skipped_steps"] == 0
    val = read_metrics(run / "metrics.jsonl", "val")
    assert len(val) == 1 and math.isfinite(val[0]["loss_cls"])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]

    # the evaluation command reads the checkpoint into a plain VPOG network
    from vpog.evaluation.command import read_checkpoint
    from vpog.model import VPOG, vpog_config_from_dict

    state, saved, _ = read_checkpoint(run)
    net = VPOG(vpog_config_from_dict(saved["model"]))
    net.load_state_dict(state)  # strict: every key matches


def test_reference_backend_gives_the_same_first_step(tiny_set, tmp_path):
    from vpog._backend import set_default_backend
    from vpog.training.trainer import Trainer

    losses = {}
    for backend in ("auto", "reference"):
        trainer = Trainer(_config(tiny_set, tmp_path, backend, f"ops.backend={backend}", "optim.max_steps=1",
                                  "data.batch_size=1",
                                  "log.val_every_steps=0", "log.image_every_steps=0", "log.tensorboard=false"))
        try:
            losses[backend] = trainer.train_step()["loss"]
        finally:
            trainer.close()
            set_default_backend("auto")
    assert math.isfinite(losses["auto"])
    assert losses["auto"] == pytest.approx(losses["reference"], rel=1e-3), losses
    assert torch.get_default_dtype() == torch.float32
