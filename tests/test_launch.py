"""Launching like the original VPOG code: `machine.num_gpus` (PyTorch's elastic launcher, 2 gloo ranks on the
CPU here, a rank failure included), `machine.gpus` / `machine.nodes` and the sbatch wrappers, and the full
preset's defaults (data=gso_shapenet, ViT-B from the CroCo v2 weights, a missing file stopping the run)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vpog.launch import LAUNCH_ENV, LaunchError, LaunchPlan, plan  # noqa: E402
from vpog.training.distributed import MachineConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "training"))  # trainer_toy: the toy task the 2-rank runs train
TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "TORCHELASTIC_RUN_ID": "x"}


# -- machine.num_gpus ------------------------------------------------------------------------------


def test_num_gpus_counts_processes():
    assert plan(MachineConfig(num_gpus=1), environ={}, cuda_count=0).processes == 1
    two_cpu = plan(MachineConfig(num_gpus=2), environ={}, cuda_count=0)
    assert two_cpu.processes == 2 and "2 CPU ranks (gloo)" in two_cpu.note
    assert plan(MachineConfig(num_gpus=2, device="cpu"), environ={}, cuda_count=4).note.endswith(
        "starting 2 CPU ranks (gloo) through torch.distributed.run")
    assert "2 GPU ranks" in plan(MachineConfig(num_gpus=2), environ={}, cuda_count=4).note
    assert plan(MachineConfig(num_gpus="auto"), environ={}, cuda_count=3).processes == 3
    single = plan(MachineConfig(num_gpus="auto"), environ={}, cuda_count=0)
    assert single.processes == 1 and "no GPU" in single.note
    with pytest.raises(LaunchError, match="asks for 4 GPU ranks but 2 GPU"):
        plan(MachineConfig(num_gpus=4), environ={}, cuda_count=2)
    with pytest.raises(LaunchError, match="but 0 GPU"):
        plan(MachineConfig(num_gpus=2, device="cuda"), environ={}, cuda_count=0)
    # one process launches nothing: a missing GPU is then the device check's to report
    assert plan(MachineConfig(device="cuda"), environ={}, cuda_count=0) == LaunchPlan(1)


def test_num_gpus_is_ignored_under_torchrun_and_srun():
    under_torchrun = plan(MachineConfig(num_gpus=4), environ=TORCHRUN_ENV, cuda_count=4)
    assert under_torchrun.processes == 1
    assert under_torchrun.note == "machine.num_gpus=4 is ignored: torchrun started this process as rank 1 of 2"
    srun = {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "5"}
    assert "srun started this process" in plan(MachineConfig(num_gpus="auto"), environ=srun, cuda_count=2).note
    # the ranks machine.num_gpus itself started say nothing; the default (1) says nothing anywhere
    assert plan(MachineConfig(num_gpus=2), environ={**TORCHRUN_ENV, LAUNCH_ENV: "2"}, cuda_count=0).note is None
    assert plan(MachineConfig(), environ=TORCHRUN_ENV, cuda_count=0).note is None


@pytest.mark.parametrize("value", [0, -1, "many", True, 1.5])
def test_num_gpus_rejects_bad_values(value):
    with pytest.raises(ValueError, match="machine.num_gpus must be an integer >= 1 or 'auto'"):
        MachineConfig(num_gpus=value)


def test_num_gpus_in_the_machine_configs():
    from vpog.cli import ConfigError, load_config

    assert load_config("train", ["machine.num_gpus=auto"]).machine.num_gpus == "auto"
    assert load_config("train", ["machine=slurm", "machine.gpus=4", "machine.nodes=2"]).machine.gpus == 4
    with pytest.raises(ConfigError, match="machine.num_gpus"):  # the seed's slurm key on machine=local
        load_config("train", ["machine.gpus=4"])


# -- machine.gpus / machine.nodes ------------------------------------------------------------------


def test_slurm_shape_outside_slurm_names_the_wrapper():
    with pytest.raises(LaunchError) as err:
        plan(MachineConfig(gpus=4, nodes=2), environ={}, overrides=["machine=slurm", "machine.gpus=4",
                                                                    "machine.nodes=2", "optim.lr=1e-4"])
    assert ("sbatch --nodes=2 --gpus-per-node=4 scripts/slurm/train_multi_node.sbatch machine.gpus=4 "
            "machine.nodes=2 optim.lr=1e-4") in str(err.value)
    with pytest.raises(LaunchError, match="sbatch --gpus-per-node=2 scripts/slurm/train_single_node.sbatch"):
        plan(MachineConfig(gpus=2), environ={}, overrides=["machine.gpus=2"])


def test_slurm_shape_inside_a_job():
    job = {"SLURM_JOB_ID": "7", "RANK": "0", "WORLD_SIZE": "8", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "4"}
    assert plan(MachineConfig(gpus=4, nodes=2), environ=job, cuda_count=4).processes == 1
    with pytest.raises(LaunchError, match="2 node\\(s\\), not machine.nodes=3.*train_multi_node.sbatch"):
        plan(MachineConfig(gpus=4, nodes=3), environ=job, cuda_count=4)
    with pytest.raises(LaunchError, match="4 rank\\(s\\) per node, not machine.gpus=8"):
        plan(MachineConfig(gpus=8), environ=job, cuda_count=4)
    with pytest.raises(LaunchError, match="1 rank\\(s\\) per node"):  # a plain python in an sbatch script
        plan(MachineConfig(gpus=2), environ={"SLURM_JOB_ID": "7"}, cuda_count=2)


FAKE_SRUN = """#!/usr/bin/env bash
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
echo "$*" >> "$SIM_LOG"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
for ((i = 0; i < ${SLURM_JOB_NUM_NODES:-1}; i++)); do echo 127.0.0.1; done
"""


def _sbatch(tmp_path: Path, script: str, nodes: int, gpus: int, *overrides: str) -> tuple[int, str, str]:
    """Run a wrapper with stand-ins for srun (records the command) and scontrol, as a job of that shape."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "VPOG_"))}
    env.update({"PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "SIM_LOG": str(tmp_path / "calls"),
                "SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": str(nodes),
                "SLURM_GPUS_ON_NODE": str(gpus), "SLURM_SUBMIT_DIR": str(tmp_path)})
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / script), *overrides], env=env,
                          capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "calls").read_text() if (tmp_path / "calls").exists() else ""
    return proc.returncode, proc.stderr, calls


def test_sbatch_wrappers_take_the_seed_spelling(tmp_path):
    rc, err, calls = _sbatch(tmp_path, "train_multi_node.sbatch", 2, 8, "machine.gpus=4", "machine.nodes=2")
    assert rc == 0, err
    assert "--nnodes=2 --nproc-per-node=4" in calls and "machine.gpus=4 machine.nodes=2" in calls
    rc, err, calls = _sbatch(tmp_path / "s", "train_single_node.sbatch", 1, 8, "machine.gpus=2")
    assert rc == 0, err
    assert "--nproc-per-node=2" in calls


@pytest.mark.parametrize("script, nodes, gpus, overrides, message", [
    ("train_single_node.sbatch", 1, 8, ["machine.nodes=2"],
     "machine.nodes=2 needs several nodes: submit sbatch --nodes=2 scripts/slurm/train_multi_node.sbatch"),
    ("train_multi_node.sbatch", 2, 8, ["machine.nodes=4"],
     "machine.nodes=4 but this job has 2 node(s): submit it with sbatch --nodes=4 "
     "scripts/slurm/train_multi_node.sbatch"),
    ("train_single_node.sbatch", 1, 2, ["machine.gpus=4"],
     "machine.gpus=4 but this job has 2 GPU(s) per node: submit it with sbatch --gpus-per-node=4 "
     "scripts/slurm/train_single_node.sbatch"),
    ("train_multi_node.sbatch", 2, 8, ["machine.gpus=two"], "must be integers >= 1 or null, got 'two'"),
])
def test_sbatch_wrappers_refuse_a_shape_the_job_lacks(tmp_path, script, nodes, gpus, overrides, message):
    rc, err, calls = _sbatch(tmp_path, script, nodes, gpus, *overrides)
    assert rc == 2 and message in err, err
    assert calls == ""  # nothing was started


# -- the full preset --------------------------------------------------------------------------------


def test_full_preset_trains_vitb_from_croco_on_gso_shapenet():
    from vpog.cli import load_config

    for overrides in (["preset=full"], ["machine=slurm"]):
        cfg = load_config("train", overrides)
        assert (cfg.data.name, cfg.model.name) == ("gso_shapenet", "vpog_vitb")
        assert cfg.model.encoder.checkpoint == "pretrained/CroCo_V2_ViTBase_BaseDecoder.pth"
    assert load_config("train", ["preset=full", "data=gso"]).data.name == "gso"  # data= still wins
    vitl = load_config("train", ["preset=full", "model=vpog_vitl"]).model.encoder.checkpoint
    assert vitl == "pretrained/CroCo_V2_ViTLarge_BaseDecoder.pth"
    assert load_config("train", ["preset=full", "model.encoder.checkpoint=null"]).model.encoder.checkpoint is None
    assert load_config("train", []).model.encoder.checkpoint is None  # the demo's tiny model


def test_missing_croco_weights_stop_the_run_with_one_line(tmp_path, monkeypatch, caplog):
    from vpog import train

    monkeypatch.chdir(tmp_path)  # no pretrained/ here
    with caplog.at_level(logging.ERROR, logger="vpog.train"):
        assert train.main(["preset=full", f"output_dir={tmp_path / 'out'}"]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.name == "vpog.train"]
    assert "\n" not in line and "pretrained/CroCo_V2_ViTBase_BaseDecoder.pth" in line
    assert "https://download.europe.naverlabs.com/ComputerVision/CroCo/" in line
    assert "model.encoder.checkpoint=null" in line
    assert not (tmp_path / "out").exists()  # stopped before anything was built


def test_slurm_spelling_outside_slurm_stops_vpog_train(caplog, monkeypatch):
    from vpog import train

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with caplog.at_level(logging.ERROR, logger="vpog.train"):
        assert train.main(["machine=slurm", "machine.gpus=4", "machine.nodes=2"]) == 2
    assert "scripts/slurm/train_multi_node.sbatch" in caplog.text


# -- 2 gloo ranks through the elastic launcher -------------------------------------------------------


def _launch(out: Path, run: str, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC_", "SLURM_")) and k not in (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", LAUNCH_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "training"), str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "vpog.train", "machine.num_gpus=2", "task=trainer_toy:ToyTask", f"output_dir={out}",
           f"run_name={run}", "machine.device=cpu", "machine.num_workers=0", "optim.max_steps=4",
           "optim.warmup_steps=1", "checkpoint.every_steps=2", "log.every_steps=2", "log.val_every_steps=0",
           "log.image_every_steps=0", "log.tensorboard=false", "faults.process_group_timeout_s=60",
           f"+toy.tag={run}", *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """A run that finishes and one whose rank 0 dies at step 1 (os._exit(3)), launched together."""
    out = tmp_path_factory.mktemp("num_gpus")
    procs = {"ok": _launch(out, "ok"), "crash": _launch(out, "crash", "+toy.crash_at_step=1")}
    results = {}
    for name, proc in procs.items():
        try:
            log_text, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            log_text, _ = proc.communicate()
        results[name] = (proc.returncode, log_text)
    return out, results


def test_num_gpus_starts_two_gloo_ranks(two_rank_runs):
    from trainer_toy import read_trace

    out, results = two_rank_runs
    rc, log_text = results["ok"]
    assert rc == 0, log_text[-4000:]
    assert "machine.num_gpus=2: starting 2 CPU ranks (gloo) through torch.distributed.run" in log_text
    assert "run " + str(out / "ok") + ": 2 rank(s)" in log_text  # one process group of both ranks
    assert "is ignored" not in log_text  # the started ranks do not launch again
    for rank in (0, 1):  # each rank wrote its own trace: steps 0..3, a different share of the data
        assert [r["step"] for r in read_trace(out / "ok", "ok", rank)] == [0, 1, 2, 3]
    assert {r["pid"] for r in read_trace(out / "ok", "ok", 0)}.isdisjoint(
        {r["pid"] for r in read_trace(out / "ok", "ok", 1)})
    assert list_checkpoints_of(out / "ok")[0] == 4


def test_a_failed_rank_fails_the_launch(two_rank_runs):
    out, results = two_rank_runs
    rc, log_text = results["crash"]
    assert rc == 1, log_text[-4000:]  # torchrun's exit code when a rank fails
    assert "rank 0 (pid" in log_text and "failed with exit code 3" in log_text
    assert list_checkpoints_of(out / "crash") == []  # it died before the first checkpoint (step 2)


def list_checkpoints_of(run: Path) -> list[int]:
    from vpog.training.checkpoint import list_checkpoints

    return [s for s, _ in list_checkpoints(run / "checkpoints")]
