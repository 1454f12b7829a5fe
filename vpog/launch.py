"""How many ranks `python -m vpog.train` runs, and starting them: `machine.num_gpus`, `machine.gpus`, `machine.nodes`.

People coming from the original VPOG training code start runs with `machine.num_gpus=N` on one machine
and `machine=slurm machine.gpus=G machine.nodes=M` on a cluster; vpog meets those habits without a
process manager of its own:

- `python -m vpog.train machine.num_gpus=N` (N > 1) hands the same command line to PyTorch's elastic
  launcher, `torch.distributed.run.main(["--nproc-per-node=N", "--module", "vpog.train", *overrides])`:
  the code behind `torchrun --nproc-per-node=N -m vpog.train ...`, so the ranks get torchrun's
  environment (RANK, LOCAL_RANK, WORLD_SIZE, ...), its c10d rendezvous on localhost, its signal
  forwarding and failure handling (one failed rank stops the others), and the launching process exits as
  torchrun does: 0 when every rank exited 0, 1 otherwise (also when the launcher itself got a signal).
  `machine.num_gpus=auto` is every visible GPU (one process without a GPU). N counts processes: one per
  GPU when the ranks run on CUDA (N larger than the visible GPUs is an error), N CPU ranks with gloo
  with `machine.device=cpu` or on a machine without a GPU (the tests run 2 that way).
- A process that torchrun or srun started (RANK and WORLD_SIZE, or SLURM_PROCID inside an srun step, are
  set) never launches again: there `machine.num_gpus` is ignored with one log line (none in the ranks
  `machine.num_gpus` itself started: they carry `VPOG_NUM_GPUS_LAUNCH`).
- `machine.gpus` / `machine.nodes` size a SLURM job. The sbatch wrappers read them from their overrides
  (torchrun's --nproc-per-node and the node count, checked against the allocation); `vpog.train` checks
  them against the ranks it finds and, outside a SLURM job or with a mismatch, stops with the sbatch
  command to use.

References: torch.distributed.run (torchrun), pytorch/torchtitan `run_train.sh`.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vpog.training.distributed import DistEnv, MachineConfig, read_dist_env

log = logging.getLogger("vpog.launch")

LAUNCH_ENV = "VPOG_NUM_GPUS_LAUNCH"
"""Set in the ranks that `machine.num_gpus` started (to N), so that they do not report the key as ignored."""
SINGLE_NODE_WRAPPER = "scripts/slurm/train_single_node.sbatch"
MULTI_NODE_WRAPPER = "scripts/slurm/train_multi_node.sbatch"


class LaunchError(ValueError):
    """The machine settings cannot be met here; the message says what to run instead."""


@dataclass(frozen=True)
class LaunchPlan:
    """What `vpog.train` does in this process: run one rank (`processes == 1`) or start `processes` ranks."""

    processes: int
    """Ranks to start on this machine through the elastic launcher; 1: train in this process."""
    note: str | None = None
    """One line for the log (why machine.num_gpus was ignored or resolved as it was), or None."""


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def plan(machine: MachineConfig, environ: Mapping[str, str] | None = None, cuda_count: int | None = None,
         overrides: Sequence[str] = ()) -> LaunchPlan:
    """Decide from `machine` and the environment whether to launch ranks; LaunchError when the settings
    cannot be met (the message names the command to use). `overrides`: the command line, for messages."""
    env = os.environ if environ is None else environ
    dist = read_dist_env(env)
    check_slurm_shape(machine, dist, env, overrides)
    if dist.launcher != "single":
        if machine.num_gpus != 1 and LAUNCH_ENV not in env:
            started_by = "torchrun" if dist.launcher == "torchrun" else "srun"
            return LaunchPlan(1, f"machine.num_gpus={machine.num_gpus} is ignored: {started_by} started this "
                                 f"process as rank {dist.rank} of {dist.world_size}")
        return LaunchPlan(1)
    gpus = _cuda_count() if cuda_count is None else int(cuda_count)
    on_cuda = machine.device == "cuda" or (machine.device == "auto" and gpus > 0)
    if machine.num_gpus == "auto":
        if machine.device == "cpu" or gpus == 0:
            return LaunchPlan(1, "machine.num_gpus=auto: no GPU in use, one process")
        n = gpus
    else:
        n = int(machine.num_gpus)
    if n == 1:  # one process: resolve_device reports a missing GPU itself
        return LaunchPlan(1)
    if on_cuda and n > gpus:
        raise LaunchError(f"machine.num_gpus={machine.num_gpus} asks for {n} GPU ranks but {gpus} GPU(s) are "
                          f"visible (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}); use "
                          f"machine.num_gpus={max(gpus, 1)} or machine.num_gpus=auto")
    kind = f"{n} GPU ranks" if on_cuda else f"{n} CPU ranks (gloo)"
    return LaunchPlan(n, f"machine.num_gpus={machine.num_gpus}: starting {kind} through torch.distributed.run")


def launch_local(processes: int, overrides: Sequence[str], module: str = "vpog.train") -> int:
    """Run `torchrun --nproc-per-node=<processes> -m <module> <overrides>` in this process (PyTorch's own
    launcher, not a copy of it) and return torchrun's exit code: 0 when every rank exited 0, else 1."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    args = ["--standalone", f"--nproc-per-node={int(processes)}", "--module", module, *overrides]
    os.environ[LAUNCH_ENV] = str(int(processes))
    log.info("torchrun %s", shlex.join(args))
    try:
        torchrun_main(args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        log.error("rank %d (pid %s) failed with exit code %s; the launcher stopped the other ranks (details "
                  "below and in that rank's log above)\n%s", rank, failure.pid, failure.exitcode, exc.format_msg())
        return 1
    except SignalException as exc:
        log.warning("the launcher got %s: it was passed on to the ranks, which have stopped", exc.sigval.name)
        return 1
    finally:
        os.environ.pop(LAUNCH_ENV, None)
    return 0


def _sbatch_command(gpus: int | None, nodes: int | None, overrides: Sequence[str]) -> str:
    multi = (nodes or 1) > 1
    flags = (f" --nodes={nodes}" if multi else "") + (f" --gpus-per-node={gpus}" if gpus else "")
    wrapper = MULTI_NODE_WRAPPER if multi else SINGLE_NODE_WRAPPER
    rest = [o for o in overrides if o != "machine=slurm"]
    return f"sbatch{flags} {wrapper}" + (" " + shlex.join(rest) if rest else "")


def check_slurm_shape(machine: MachineConfig, dist: DistEnv, environ: Mapping[str, str],
                      overrides: Sequence[str] = ()) -> None:
    """LaunchError when `machine.gpus` / `machine.nodes` do not describe the ranks of this job.

    Outside a SLURM job (no SLURM_JOB_ID) any value is an error: a job of that shape is submitted with
    the sbatch wrapper the message names. Inside one, the ranks must match: `gpus` ranks per node (torchrun's
    LOCAL_WORLD_SIZE, or srun's tasks per node) and `nodes` = WORLD_SIZE / LOCAL_WORLD_SIZE.
    """
    gpus, nodes = machine.gpus, machine.nodes
    if gpus is None and nodes is None:
        return
    command = _sbatch_command(gpus, nodes, overrides)
    shape = ", ".join(f"machine.{k}={v}" for k, v in (("gpus", gpus), ("nodes", nodes)) if v is not None)
    if "SLURM_JOB_ID" not in environ:
        raise LaunchError(f"{shape} size a SLURM job, which the sbatch wrappers start: {command} "
                          f"(on one machine without SLURM: python -m vpog.train machine.num_gpus=N)")
    local = dist.local_world_size if dist.launcher != "single" else 1
    have_nodes = max(dist.world_size // max(local, 1), 1)
    problems = []
    if gpus is not None and local != gpus:
        problems.append(f"{local} rank(s) per node, not machine.gpus={gpus}")
    if nodes is not None and have_nodes != nodes:
        problems.append(f"{have_nodes} node(s), not machine.nodes={nodes}")
    if problems:
        raise LaunchError(f"this SLURM job runs {' and '.join(problems)}; submit it with the wrapper that "
                          f"starts that shape: {command}")
