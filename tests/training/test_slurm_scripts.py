"""scripts/slurm/*.sbatch: syntax, and a real launch under a simulated SLURM environment.

The simulation puts stand-ins for `srun` (runs the command once per task, in parallel, with the task's
SLURM_PROCID/SLURM_NODEID, as SLURM would on that many nodes) and `scontrol` (`show hostnames` prints
127.0.0.1 once per node; `requeue` is recorded) first on PATH and sets the variables sbatch would. The
scripts then run unchanged: torchrun (c10d rendezvous for several nodes), 2 CPU workers with gloo, the toy
task.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vpog.training.checkpoint import list_checkpoints
from vpog.training.logger import read_metrics

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "slurm"

FAKE_SRUN = """#!/usr/bin/env bash
ntasks=1
while [[ $# -gt 0 && $1 == -* ]]; do
  case $1 in --ntasks=*) ntasks=${1#--ntasks=};; esac
  shift
done
echo "srun ntasks=$ntasks $*" >> "$SIM_LOG"
pids=()
for ((i = 0; i < ntasks; i++)); do
  SLURM_PROCID=$i SLURM_NODEID=$i SLURM_LOCALID=0 SLURM_STEP_NUM_TASKS=$ntasks "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$SIM_LOG"
if [[ $1 == show && $2 == hostnames ]]; then
  for ((i = 0; i < ${SLURM_JOB_NUM_NODES:-1}; i++)); do echo 127.0.0.1; done
fi
"""


@pytest.mark.parametrize("script", ["train_single_node.sbatch", "train_multi_node.sbatch"])
def test_bash_syntax_and_sbatch_header(script):
    path = SCRIPTS / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    for directive in ("#SBATCH --requeue", "#SBATCH --signal=USR1@", "#SBATCH --gpus-per-node="):
        assert directive in text
    assert "-m vpog.train machine=slurm" in text and '"$@"' in text
    assert "SIGUSR1" in text  # torchrun must forward the pre-timeout signal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {"multi": ("train_multi_node.sbatch", 2, 1), "single": ("train_single_node.sbatch", 1, 2)}


def _launch(tmp_path: Path, script: str, nodes: int, gpus: int) -> subprocess.Popen:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update({
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "training"), str(REPO), env.get("PYTHONPATH", "")]),
        "SIM_LOG": str(tmp_path / "sim.log"), "SLURM_JOB_ID": "777", "SLURM_JOB_NAME": "vpog",
        "SLURM_JOB_NODELIST": "sim[1-2]", "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
        "SLURM_GPUS_ON_NODE": str(gpus), "SLURM_SUBMIT_DIR": str(REPO), "SLURM_CPUS_PER_TASK": "1",
        "VPOG_RDZV_PORT": str(_free_port()), "VPOG_MAX_RESTARTS": "0", "OMP_NUM_THREADS": "1",
    })
    overrides = ["task=trainer_toy:ToyTask", f"output_dir={tmp_path / 'out'}", "machine.device=cpu",
                 "machine.dist_backend=gloo", "machine.precision=fp32", "machine.num_workers=0",
                 "optim.max_steps=4", "optim.warmup_steps=1", "checkpoint.every_steps=2", "log.every_steps=2",
                 "log.val_every_steps=0", "log.image_every_steps=0", "log.tensorboard=false",
                 "faults.process_group_timeout_s=60", "+toy.tag=slurm"]
    return subprocess.Popen(["bash", str(SCRIPTS / script), *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    """Both scripts at once (they are independent), each in its own folder."""
    pytest.importorskip("hydra", reason="the training CLI composes its config with hydra-core")
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    dirs = {name: tmp_path_factory.mktemp(name) for name in CASES}
    procs = {name: _launch(dirs[name], *CASES[name]) for name in CASES}
    results = {}
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        results[name] = (dirs[name], proc.returncode, out)
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_launch_under_simulated_slurm(launches, case):
    tmp_path, rc, output = launches[case]
    _, nodes, gpus = CASES[case]
    assert rc == 0, output[-4000:]
    calls = (tmp_path / "sim.log").read_text()
    assert f"srun ntasks={nodes} torchrun" in calls
    if nodes > 1:
        assert "scontrol show hostnames sim[1-2]" in calls
        assert "--rdzv-backend=c10d" in calls and f"--nnodes={nodes}" in calls
    else:
        assert "--standalone" in calls
    assert f"--nproc-per-node={gpus}" in calls
    run = tmp_path / "out" / "slurm-777"  # run_name from the job id: a requeued job finds its checkpoints
    assert [s for s, _ in list_checkpoints(run / "checkpoints")][0] == 4
    assert "2 rank(s)" in output  # both workers joined one process group
    assert (run / "trace_slurm_rank1.jsonl").exists()
    assert read_metrics(run / "metrics.jsonl", "train")[-1]["step"] == 4
    assert "requeue" not in calls  # finished normally: no requeue
    # every rank left its process group before exiting (no gloo thread alive into finalisation)
    assert "process-group threads still alive" not in output
