"""Process-group setup for `torchrun`, SLURM `srun` and plain single-process runs.

Where a rank learns who it is, in order:

1. torchrun's variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR`,
   `MASTER_PORT`, set by `torchrun` on every worker; `srun torchrun` on SLURM lands here too, and so do
   the ranks `python -m vpog.train machine.num_gpus=N` starts through torchrun's launcher, `vpog/launch.py`);
2. SLURM's, only as a fallback, when `srun python -m vpog.train` starts one task per GPU
   (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`, the first host of `SLURM_STEP_NODELIST`
   as the rendezvous address). `SLURM_STEP_NUM_TASKS` exists only inside an `srun` step, so a
   plain `python -m vpog.train` in an sbatch script is not mistaken for a multi-task job;
3. otherwise one process, no process group.

The process group uses NCCL on GPUs and gloo on CPUs, with a timeout (`faults.process_group_timeout_s`)
so that a rank that died or hangs turns into an error on the others instead of a silent hang.

References: facebookresearch/vggt `training/` and naver/dust3r `dust3r/training.py` (torch.distributed
trainers reading torchrun's environment), pytorch/torchtitan `distributed/utils.py`.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DIST_BACKENDS = ("auto", "nccl", "gloo")


@dataclass(kw_only=True)
class MachineConfig:
    """Where and how the ranks run (mirrors `vpog/config/machine/*.yaml`)."""

    name: str = "local"
    """Name of the machine preset (for the logs)."""
    device: str = "auto"
    """auto (cuda:LOCAL_RANK when CUDA is available, else cpu) | cuda | cpu."""
    num_workers: int = 2
    """DataLoader worker processes per rank (0 loads in the training process)."""
    precision: str = "auto"
    """auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp16 (autocast + GradScaler) | fp32."""
    dist_backend: str = "auto"
    """auto (nccl on GPU, gloo on CPU) | nccl | gloo."""
    activation_checkpointing: bool = False
    """Recompute the encoder's and group blocks' activations in the backward pass (less memory)."""
    requeue_on_signal: bool = False
    """On SLURM (SLURM_JOB_ID set): after a SIGUSR1 stop (pre-timeout signal), `scontrol requeue` the job."""
    num_gpus: int | str = 1
    """Ranks `python -m vpog.train` starts on this machine through PyTorch's elastic launcher, exactly as
    `torchrun --nproc-per-node=N -m vpog.train` would (see `vpog.launch`): an integer >= 1, or "auto" for
    every visible GPU (one process without a GPU). One rank per GPU where the ranks run on CUDA; with
    `device: cpu`, or no GPU and `device: auto`, N CPU ranks with gloo. Ignored, with one log line, in a
    process that torchrun or srun started."""
    gpus: int | None = None
    """SLURM, the original VPOG code's spelling: GPUs (ranks) per node. The sbatch wrappers give it to
    torchrun as --nproc-per-node; null: what the job was given. Outside a SLURM job a value stops the run
    with the sbatch command to use."""
    nodes: int | None = None
    """SLURM: nodes of the job (more than 1: scripts/slurm/train_multi_node.sbatch); null: what the job
    was given. Checked against the job like `gpus`."""

    def __post_init__(self) -> None:
        if isinstance(self.num_gpus, str) and self.num_gpus.strip().isdigit():
            self.num_gpus = int(self.num_gpus)
        if isinstance(self.num_gpus, bool) or not (self.num_gpus == "auto" or (
                isinstance(self.num_gpus, int) and self.num_gpus >= 1)):
            raise ValueError(f"machine.num_gpus must be an integer >= 1 or 'auto', got {self.num_gpus!r}")
        for key in ("gpus", "nodes"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"machine.{key} must be an integer >= 1 or null, got {value!r}")
        if self.device not in DEVICES:
            raise ValueError(f"machine.device must be one of {DEVICES}, got '{self.device}'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"machine.precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.dist_backend not in DIST_BACKENDS:
            raise ValueError(f"machine.dist_backend must be one of {DIST_BACKENDS}, got '{self.dist_backend}'")
        if self.num_workers < 0:
            raise ValueError(f"machine.num_workers must be >= 0, got {self.num_workers}")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    launcher: str = "single"
    """Which variables gave the ranks: "torchrun", "slurm" or "single"."""

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# --------------------------------------------------------------------------------------------
# Reading the environment


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list -> host names: "gpu[01-03,07],login2" -> gpu01 gpu02 gpu03 gpu07 login2.

    Zero padding of ranges is kept ("n[08-10]" -> n08 n09 n10). Several bracket groups in one name
    ("r[1-2]n[1-2]") expand as a product, as `scontrol show hostnames` does.
    """
    if not isinstance(nodelist, str) or not nodelist.strip():
        raise ValueError(f"nodelist must be a non-empty SLURM host list, got {nodelist!r}")
    # split on commas that are not inside brackets
    parts, depth, cur = [], 0, ""
    for ch in nodelist.strip():
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    hosts: list[str] = []
    for part in parts:
        if not part:
            continue
        hosts.extend(_expand_one(part, nodelist))
    return hosts


def _expand_one(name: str, whole: str) -> list[str]:
    m = re.search(r"\[([^\]]*)\]", name)
    if m is None:
        return [name]
    prefix, suffix = name[: m.start()], name[m.end():]
    out = []
    for item in m.group(1).split(","):
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"nodelist has a bad range '{item}' in {whole!r}")
            width = len(lo)
            values = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        else:
            values = [item]
        for v in values:
            out.extend(_expand_one(prefix + v + suffix, whole))
    return out


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ValueError(f"environment variable {key} must be an integer, got {environ[key]!r}") from None


def read_dist_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """This process's rank and world from torchrun's variables, else SLURM's (inside `srun`), else one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        return DistEnv(
            rank=_int(env, "RANK"),
            world_size=world,
            local_rank=_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            local_world_size=_int(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else world,
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=_int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
            launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env:
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"
        if "MASTER_PORT" in env:
            port = _int(env, "MASTER_PORT")
        else:  # one port per job, so that two jobs sharing a node do not collide
            port = 15000 + (int(env.get("SLURM_JOB_ID", "0") or 0) % 20000)
        tasks_per_node = env.get("SLURM_STEP_TASKS_PER_NODE", "")
        local_world = int(m.group(1)) if (m := re.match(r"(\d+)", tasks_per_node)) else world
        return DistEnv(
            rank=_int(env, "SLURM_PROCID"),
            world_size=world,
            local_rank=_int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            local_world_size=local_world,
            master_addr=env.get("MASTER_ADDR") or expand_nodelist(nodes)[0],
            master_port=port,
            launcher="slurm",
        )
    return DistEnv()


# --------------------------------------------------------------------------------------------
# Process group


@dataclass
class DistContext:
    """The initialised job: environment, device, precision and whether a process group exists."""

    env: DistEnv
    device: torch.device
    backend: str | None
    """"nccl" / "gloo" when a process group was created, None for one process."""
    autocast_dtype: torch.dtype | None
    """bf16 / fp16 autocast dtype, None for fp32."""

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0


def resolve_device(machine: MachineConfig, env: DistEnv) -> torch.device:
    """cuda:LOCAL_RANK (modulo the visible GPUs) or cpu."""
    want = machine.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("machine.device is 'cuda' but torch sees no CUDA device")
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_precision(machine: MachineConfig, device: torch.device) -> torch.dtype | None:
    p = machine.precision
    if p == "auto":
        p = "bf16" if device.type == "cuda" else "fp32"
    if p in ("bf16", "fp16") and device.type != "cuda":
        raise ValueError(f"machine.precision '{p}' needs a CUDA device, got '{device}' (use fp32 or auto)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p]


def init_distributed(machine: MachineConfig, timeout_s: float = 1800.0,
                     environ: Mapping[str, str] | None = None) -> DistContext:
    """Read the environment, pick the device, and create the process group when there are several ranks."""
    if timeout_s <= 0:
        raise ValueError(f"faults.process_group_timeout_s must be > 0, got {timeout_s}")
    env = read_dist_env(environ)
    device = resolve_device(machine, env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast_dtype = resolve_precision(machine, device)
    backend = None
    if env.distributed:
        backend = machine.dist_backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl" and device.type != "cuda":
            raise ValueError("machine.dist_backend 'nccl' needs CUDA devices; use gloo (or auto) on CPU")
        timeout = datetime.timedelta(seconds=float(timeout_s))
        if not dist.is_initialized():
            _import_group_capturing_modules()
            # device_id binds NCCL to this rank's GPU (no guessing in barrier())
            extra = {"device_id": device} if backend == "nccl" else {}
            if env.launcher == "torchrun":
                dist.init_process_group(backend=backend, store=_torchrun_store(env, timeout, environ),
                                        rank=env.rank, world_size=env.world_size, timeout=timeout, **extra)
            else:
                dist.init_process_group(
                    backend=backend, init_method=f"tcp://{env.master_addr}:{env.master_port}",
                    rank=env.rank, world_size=env.world_size, timeout=timeout, **extra,
                )
        log.info("process group: %s, rank %d of %d (local %d of %d, from %s), device %s",
                 backend, env.rank, env.world_size, env.local_rank, env.local_world_size, env.launcher, device)
    return DistContext(env=env, device=device, backend=backend, autocast_dtype=autocast_dtype)


def _torchrun_store(env: DistEnv, timeout: datetime.timedelta, environ: Mapping[str, str] | None):
    """The rendezvous store under torchrun, with keys prefixed by the restart attempt.

    torchrun keeps one store across `--max-restarts` attempts; `init_method="env://"` reuses its
    keys, so a restarted group reads the previous attempt's (dead) peer addresses and fails to connect
    (seen with gloo on torch 2.13; pytorch/pytorch#167288 reports the same with NCCL). A prefix per
    attempt keeps the attempts apart.
    """
    e = os.environ if environ is None else environ
    agent_store = e.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts the store; all ranks connect
    base = dist.TCPStore(env.master_addr, env.master_port, env.world_size,
                         is_master=(not agent_store and env.rank == 0), timeout=timeout)
    attempt = e.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"vpog/{e.get('TORCHELASTIC_RUN_ID', 'run')}/attempt{attempt}", base)


def _import_group_capturing_modules() -> None:
    """Import, before the default process group exists, the torch modules that capture it at import.

    `torch.distributed.nn.functional` declares `group=group.WORLD` as default argument values. Imported
    after `init_process_group` (DDP's first construction imports it through torch._dynamo), those
    defaults hold the default group for the life of the process, so `destroy_process_group` cannot
    free it: gloo's worker threads then live into interpreter finalisation, and one that drops the
    last reference to a finished collective's tensors there needs the GIL, is ended by the
    interpreter, and takes the process down with `terminate called without an active exception`
    (SIGABRT) -- a race that load makes likelier. Imported first, the defaults are None.
    """
    import torch.distributed.nn.functional  # noqa: F401


def process_group_threads() -> list[str]:
    """Names of this process's native threads that belong to a process group (gloo, NCCL).

    Empty once every group is destroyed. Linux only (/proc/self/task); elsewhere always empty.
    """
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return []
    names = []
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name.startswith(_GROUP_THREAD_PREFIXES):
            names.append(name)
    return sorted(names)


# gloo's worker and transport threads, NCCL's watchdog and heartbeat monitor (kernel thread names,
# at most 15 characters)
_GROUP_THREAD_PREFIXES = ("pt_gloo", "gloo_", "pt_nccl")


def destroy_distributed(abort: bool = False, timeout_s: float = 60.0) -> bool:
    """Leave and free the process group; True when no process-group thread is left afterwards.

    Call it after dropping every object that holds the group (the DDP wrapper), while Python is fully
    alive. `abort=False` (a finished run, a signal stop: every collective has completed on every rank)
    destroys the group, which joins its worker threads. `abort=True` (an exception) aborts it instead,
    so that a collective still pending with ranks that will never join it cannot block this rank's
    exit; that runs on a helper thread and is given up after `timeout_s`, because gloo's abort still
    waits for pending work. A False return means the group's threads are still alive: the caller
    must not let the interpreter finalise with them (exit with `os._exit` after flushing).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return not process_group_threads()
    gc.collect()  # DDP and its reducer sit in reference cycles
    teardown = dist.distributed_c10d._abort_process_group if abort else dist.destroy_process_group
    if abort:
        done = threading.Event()

        def run() -> None:
            try:
                teardown()
            except Exception as exc:  # a broken group: nothing more to do with it
                log.warning("aborting the process group failed: %s", exc)
            done.set()

        threading.Thread(target=run, name="vpog-pg-abort", daemon=True).start()
        if not done.wait(timeout_s):
            log.warning("aborting the process group did not finish in %.0f s", timeout_s)
            return False
    else:
        teardown()
    gc.collect()
    left = process_group_threads()
    if left:
        log.warning("process-group threads still alive after leaving the group (%s): something outside "
                    "vpog still holds the group", ", ".join(left))
    return not left


# --------------------------------------------------------------------------------------------
# Collectives that degrade to no-ops in a single process


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks, in place; returns `values`."""
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, in place; returns `values`."""
    if _active():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_object(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _active():
        dist.barrier()
