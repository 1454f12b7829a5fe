"""Unit tests of the trainer's parts: environment reading, schedule, parameter groups, signals, configs."""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
from torch import nn

from vpog.training import signals
from vpog.training.distributed import DistEnv, MachineConfig, expand_nodelist, read_dist_env
from vpog.training.logger import LogConfig, MetricLogger, read_metrics
from vpog.training.optim import OptimConfig, build_optimizer, build_scheduler, lr_factor
from vpog.training.trainer import TrainerConfig

# -- environment ------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodelist, hosts", [
    ("node7", ["node7"]),
    ("gpu[01-03,07]", ["gpu01", "gpu02", "gpu03", "gpu07"]),
    ("a[8-10],b2", ["a8", "a9", "a10", "b2"]),
    ("n[008-010]", ["n008", "n009", "n010"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("x-1,y[3]", ["x-1", "y3"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_expand_nodelist_rejects_bad_input():
    with pytest.raises(ValueError, match="nodelist"):
        expand_nodelist("")
    with pytest.raises(ValueError, match="range"):
        expand_nodelist("n[5-2]")


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8",
         "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[12-13]",
         "SLURM_JOB_NODELIST": "gpu[12-13]", "SLURM_NTASKS": "8"}


def test_torchrun_variables_win_over_slurm():
    env = dict(SLURM, RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", MASTER_ADDR="h0",
               MASTER_PORT="29501")
    assert read_dist_env(env) == DistEnv(rank=3, world_size=4, local_rank=1, local_world_size=2, master_addr="h0",
                                         master_port=29501, launcher="torchrun")


def test_slurm_fallback_inside_srun():
    e = read_dist_env(SLURM)
    assert (e.rank, e.world_size, e.local_rank, e.local_world_size) == (5, 8, 1, 4)
    assert e.master_addr == "gpu12" and e.launcher == "slurm"
    assert e.master_port == 15000 + 4242


def test_batch_shell_without_srun_is_one_process():
    env = {k: v for k, v in SLURM.items() if not k.startswith("SLURM_STEP")}
    assert read_dist_env(env) == DistEnv()
    assert read_dist_env({}) == DistEnv()


def test_bad_rank_variable_named():
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        read_dist_env({"RANK": "0", "WORLD_SIZE": "two"})


def test_machine_config_checks():
    with pytest.raises(ValueError, match="machine.precision"):
        MachineConfig(precision="fp8")
    with pytest.raises(ValueError, match="machine.device"):
        MachineConfig(device="tpu")


# -- optimiser and schedule ---------------------------------------------------------------------------


def test_schedule_warmup_then_cosine_to_floor():
    w, s, m = 10, 110, 0.01
    f = [lr_factor(i, w, s, m) for i in range(130)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0)
    assert f[60] == pytest.approx(m + (1 - m) * 0.5)
    assert all(a >= b for a, b in zip(f[10:110], f[11:111]))
    assert f[110] == pytest.approx(m) and f[129] == pytest.approx(m)
    assert lr_factor(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_param_groups_backbone_scale_and_no_decay():
    model = nn.ModuleDict({"encoder": nn.Linear(4, 4), "head": nn.Linear(4, 2), "norm": nn.LayerNorm(2)})
    model.register_parameter("unseen_token", nn.Parameter(torch.zeros(1, 4)))
    cfg = OptimConfig(lr=1e-3, backbone_lr_scale=0.1, weight_decay=0.05, warmup_steps=2, max_steps=10)
    opt = build_optimizer(model, cfg, lambda n: n.startswith("encoder."), no_decay_names=("unseen_token",))
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone_decay"]["lr"] == pytest.approx(1e-4)
    assert groups["head_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["head_no_decay"]["weight_decay"] == 0.0
    ids = {id(p) for p in groups["head_no_decay"]["params"]}
    assert id(model.unseen_token) in ids
    assert id(model["head"].weight) in {id(p) for p in groups["head_decay"]["params"]}
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"] / groups[opt.param_groups[0]["name"]]["initial_lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([lr_factor(i, 2, 10, cfg.min_lr_ratio) for i in range(12)])


def test_optim_config_checks():
    with pytest.raises(ValueError, match="optim.warmup_steps"):
        OptimConfig(warmup_steps=50, max_steps=10)
    with pytest.raises(ValueError, match="optim.grad_accum_steps"):
        OptimConfig(grad_accum_steps=0)


def test_trainer_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="optim.lrr"):
        TrainerConfig.from_config({"optim": {"lrr": 1.0}})
    c = TrainerConfig.from_config({"optim": {"lr": 0.5, "max_steps": 7, "warmup_steps": 1},
                                   "ops": {"backend": "reference"}, "run_name": "x"})
    assert c.optim.lr == 0.5 and c.ops_backend == "reference" and c.run_dir.name == "x"
    assert not math.isnan(c.optim.min_lr_ratio)


def test_composed_train_config_builds():
    from vpog.cli import load_config

    for overrides in ([], ["machine=slurm"], ["preset=full"], ["ops.backend=reference"]):
        c = TrainerConfig.from_config(load_config("train", overrides))
        assert c.checkpoint.keep_last >= 2
    assert TrainerConfig.from_config(load_config("train", ["machine=slurm"])).machine.requeue_on_signal


# -- signals --------------------------------------------------------------------------------------------


def test_stop_request_records_strongest_signal_and_second_ctrl_c_raises():
    req = signals.StopRequest().install()
    try:
        assert req.code == signals.NONE
        os.kill(os.getpid(), signal.SIGTERM)
        assert req.code == signals.SIGTERM_STOP
        os.kill(os.getpid(), signal.SIGUSR1)
        assert req.code == signals.SIGUSR1_STOP
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        req.uninstall()
    assert signal.getsignal(signal.SIGTERM) is not req._handle


def test_requeue_calls_scontrol(tmp_path):
    log_file = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {log_file}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "77"}
    assert signals.requeue_slurm_job(env)
    assert log_file.read_text().split() == ["requeue", "77"]
    assert not signals.requeue_slurm_job({"PATH": str(tmp_path)})  # not on SLURM


# -- logger ---------------------------------------------------------------------------------------------


def test_metric_logger_writes_jsonl(tmp_path):
    m = MetricLogger(tmp_path, LogConfig(tensorboard=False, progress_bar="false"), max_steps=10)
    m.scalars(2, {"loss": 1.5, "lr": 1e-4})
    m.scalars(2, {"acc": 0.5}, kind="val")
    m.event(3, "skipped_step", loss=float("nan"))
    m.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["kind"] for r in recs] == ["train", "val", "event"]
    assert recs[0]["loss"] == 1.5 and recs[2]["loss"] == "nan"
    off = MetricLogger(tmp_path / "other", LogConfig(tensorboard=False), max_steps=1, enabled=False)
    off.scalars(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()
