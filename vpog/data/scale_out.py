"""How a rendering run is split: shards over nodes and SLURM array tasks, processes over GPUs.

- `shard=i/n` (every command that renders: `vpog.data.synthesize`, `vpog.bop.templates`): the run does
  the i-th of n disjoint parts of the work, split round-robin by position in a fixed order (objects by
  id, training shards and test scenes by index), so n runs with i = 0..n-1, on any mix of nodes, do
  every item exactly once and their union is the unsharded run's output. Without a setting, a SLURM
  array task takes its place in the array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of
  SLURM_ARRAY_TASK_COUNT); anywhere else the run is the whole (0/1).
- `num_workers=N` processes on one machine share their shard's items dynamically (a queue), each with its
  own EGL context. On a GPU machine, worker k renders on the k % G-th GPU that CUDA sees (G of them,
  CUDA_VISIBLE_DEVICES respected): pyrender opens EGL device `EGL_DEVICE_ID`, so the worker sets it to
  the EGL device whose CUDA ordinal is k % G (NVIDIA's EGL_NV_device_cuda). An EGL_DEVICE_ID set by the
  user pins every worker to that device; without GPUs (Mesa) nothing is set.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

EGL_CUDA_DEVICE_NV = 0x323A  # EGL_NV_device_cuda: the CUDA device ordinal of an EGL device


def parse_shard(value, env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """The `shard` setting -> (i, n) with 0 <= i < n.

    "i/n" (or [i, n]); None or "auto": the SLURM array task's place in its array when the SLURM array
    variables are set in `env` (default os.environ), else (0, 1). ValueError names a malformed value.
    """
    env = os.environ if env is None else env
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
            return 0, 1
        try:
            task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
            first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        except ValueError:
            raise ValueError(f"shard: SLURM_ARRAY_TASK_ID/_COUNT/_MIN must be integers, got "
                             f"{env.get('SLURM_ARRAY_TASK_ID')!r}/{env.get('SLURM_ARRAY_TASK_COUNT')!r}/"
                             f"{env.get('SLURM_ARRAY_TASK_MIN')!r}") from None
        i = task - first
        if not 0 <= i < count:
            raise ValueError(f"shard: SLURM array task {task} is not one of {count} consecutive tasks from "
                             f"{first} (an array with gaps or steps); give shard=i/n explicitly")
        return i, count
    if isinstance(value, str):
        parts = value.split("/")
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        parts = []
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = int(str(parts[0]).strip()), int(str(parts[1]).strip())
    except ValueError:
        raise ValueError(f"shard must be 'i/n' (e.g. 0/4), 'auto' or null, got {value!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must be 'i/n' with 0 <= i < n, got {value!r}")
    return i, n


def in_shard(position: int, shard: tuple[int, int]) -> bool:
    """Whether the item at `position` (0-based, in the run's fixed order) belongs to `shard` (i, n)."""
    i, n = shard
    return position % n == i


def shard_items(items: Sequence, shard: tuple[int, int]) -> list:
    """The items of `shard` (i, n): positions i, i + n, i + 2n, ... of `items`."""
    i, n = shard
    return list(items[i::n])


def egl_device_for_worker(worker: int, egl_cuda_ordinals: Sequence[int | None], cuda_visible: str | None = None,
                          egl_device_id: str | None = None, physical_gpus: int = 0) -> int | None:
    """The EGL device index worker `worker` should render on, or None (pyrender's default device).

    `egl_cuda_ordinals`: for each EGL device (in EGL's order), its CUDA ordinal or None (Mesa, or a GPU
    that CUDA does not see: CUDA_VISIBLE_DEVICES hides it). Workers go round-robin over the devices
    CUDA sees, in CUDA order. Where no EGL device reports a CUDA ordinal (a driver without
    EGL_NV_device_cuda), EGL indices are taken as physical GPU indices: CUDA_VISIBLE_DEVICES's integer
    entries if set, else 0..physical_gpus-1. An explicit `egl_device_id` (the user's EGL_DEVICE_ID)
    wins. None when there is no GPU to spread over.
    """
    if egl_device_id not in (None, ""):
        return int(egl_device_id)
    cuda = sorted((ordinal, index) for index, ordinal in enumerate(egl_cuda_ordinals) if ordinal is not None)
    if cuda:
        return cuda[worker % len(cuda)][1]
    if cuda_visible is not None:
        entries = [e.strip() for e in cuda_visible.split(",") if e.strip()]
        ids = [int(e) for e in entries if e.lstrip("-").isdigit()]
        ids = ids[:next((k for k, v in enumerate(ids) if v < 0), len(ids))]  # CUDA stops at the first invalid
        return ids[worker % len(ids)] if ids else None
    return worker % physical_gpus if physical_gpus > 0 else None


def probe_egl_cuda_ordinals() -> list[int | None]:
    """CUDA ordinal of each EGL device (None where it has none), queried through pyrender's EGL bindings;
    [] where the EGL device extensions are missing."""
    from .render import _import_pyrender

    _import_pyrender()  # PYOPENGL_PLATFORM=egl before pyrender's first import
    from pyrender.platforms import egl as pe

    try:
        devices = pe.query_devices()
    except Exception as exc:  # no EGL device enumeration (old drivers): nothing to spread over
        logger.debug("no EGL device enumeration: %s", exc)
        return []
    query = pe._get_egl_func("eglQueryDeviceAttribEXT", pe.egl.EGLBoolean, pe._EGLDeviceEXT, pe.egl.EGLint,
                             ctypes.POINTER(ctypes.c_ssize_t))
    ordinals: list[int | None] = []
    for device in devices:
        value = ctypes.c_ssize_t(-1)
        ok = query is not None and device._display is not None and query(device._display, EGL_CUDA_DEVICE_NV,
                                                                         ctypes.byref(value))
        ordinals.append(int(value.value) if ok and value.value >= 0 else None)
    return ordinals


def physical_gpu_count() -> int:
    """NVIDIA GPUs this machine exposes (/dev/nvidiaN), 0 without any."""
    return len([p for p in glob.glob("/dev/nvidia[0-9]*") if os.path.basename(p)[6:].isdigit()])


def select_egl_device(worker: int) -> int | None:
    """Set EGL_DEVICE_ID for render worker process `worker` (call it before the process's first GL
    context), as `egl_device_for_worker` decides from this machine; returns the device, or None (unset)."""
    explicit = os.environ.get("EGL_DEVICE_ID")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = 0 if explicit else physical_gpu_count()
    no_gpu = not explicit and gpus == 0 and visible is None  # a CPU machine: nothing to probe (Mesa's device)
    ordinals = [] if explicit or no_gpu else probe_egl_cuda_ordinals()
    device = egl_device_for_worker(worker, ordinals, visible, explicit, gpus)
    if device is not None:
        os.environ["EGL_DEVICE_ID"] = str(device)
        logger.debug("render worker %d: EGL device %d", worker, device)
    return device
