"""Backend discovery and dispatch for vpog ops.

Every op has a PyTorch reference path and may have faster ones:

================  =========================================================  ==============
name              what                                                       devices
================  =========================================================  ==============
reference         plain PyTorch, the ground truth the others are tested on   any
triton            Triton kernel in `vpog.kernels`                            CUDA; CPU only
                                                                             under
                                                                             TRITON_INTERPRET=1
triton_rope_sdpa  Triton rotation pre-pass, then PyTorch SDPA                as triton
                  (s2rope_attention only)
cuda              CUDA kernel of the extension `vpog._C`                     CUDA
cpu               C++ CPU kernel of the extension `vpog._C`                  CPU
================  =========================================================  ==============

`backend="auto"` takes the first available entry of the op's preference list for the tensors'
device (one fixed list per op and device type, documented next to each op). A forced backend that
cannot run raises a `RuntimeError` that says why; an "auto" fallback to the reference path is
logged once.
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vpog.kernels.launch import triton_interpreter

log = logging.getLogger(__name__)

BACKENDS = ("reference", "triton", "triton_rope_sdpa", "cuda", "cpu")
BACKEND_LABELS = {
    "reference": "PyTorch reference",
    "triton": "Triton GPU",
    "triton-interpreter": "Triton interpreter",
    "triton_rope_sdpa": "Triton rotation + PyTorch SDPA",
    "cuda": "CUDA extension",
    "cpu": "C++ CPU extension",
}

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Log `message` as a warning the first time it is seen in this process."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


# --------------------------------------------------------------------------------------------
# What is installed


@functools.cache
def triton_status() -> tuple[bool, str]:
    """(importable, version or the import error)."""
    try:
        import triton

        return True, triton.__version__
    except Exception as exc:  # ImportError, or a broken install raising something else
        return False, f"{type(exc).__name__}: {exc}"


@functools.cache
def extension_status() -> tuple[bool, str]:
    """(loaded, description or the import error) of the compiled extension `vpog._C`."""
    try:
        importlib.import_module("vpog._C")
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, "loaded"


def triton_unavailable_reason(device: torch.device) -> str | None:
    """None when Triton kernels can run on `device` (CUDA, or CPU under the interpreter), else why not."""
    ok, info = triton_status()
    if not ok:
        return f"triton is not importable ({info})"
    if device.type == "cpu" and not triton_interpreter():
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1"
    if device.type not in ("cpu", "cuda"):
        return f"Triton does not run on device type '{device.type}'"
    return None


def extension_has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether `torch.ops.vpog.<op>` is registered with a kernel for `dispatch_key` ("CPU" or "CUDA")."""
    if not extension_status()[0]:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"vpog::{op}", dispatch_key)
    except RuntimeError:
        return False


def extension_op_exists(name: str) -> bool:
    """Whether the loaded extension defines `torch.ops.vpog.<name>` (whatever its kernels); the ops
    register their fake (meta) kernels and autograd only then."""
    if not extension_status()[0]:
        return False
    try:
        getattr(torch.ops.vpog, name)
    except (AttributeError, RuntimeError):
        return False
    return True


# --------------------------------------------------------------------------------------------
# Per-op registry


@dataclass
class OpSpec:
    """An op's backends and its "auto" preference per device type.

    `extension_ops` names the `torch.ops.vpog` ops a backend of the extension needs.
    `auto` maps a device type ("cuda", "cpu") to backend names in order of preference; the
    reference path is always the last resort.
    """

    name: str
    backends: tuple[str, ...]
    auto: dict[str, tuple[str, ...]]
    extension_ops: tuple[str, ...] = ()

    def unavailable_reason(self, backend: str, device: torch.device) -> str | None:
        """None when `backend` can run this op on `device`, else why not."""
        if backend not in self.backends:
            return f"op '{self.name}' has no backend '{backend}' (it has {', '.join(self.backends)})"
        if backend == "reference":
            return None
        if backend.startswith("triton"):
            return triton_unavailable_reason(device)
        if backend in ("cuda", "cpu"):
            want = "CUDA" if backend == "cuda" else "CPU"
            if device.type != backend:
                return f"the {BACKEND_LABELS[backend]} needs {backend} tensors, got device '{device}'"
            ok, info = extension_status()
            if not ok:
                return f"the extension vpog._C is not built ({info})"
            missing = [op for op in self.extension_ops if not extension_has_kernel(op, want)]
            if missing:
                return f"vpog._C has no {want} kernel for {', '.join('vpog::' + m for m in missing)}"
        return None

    def auto_choice(self, device: torch.device) -> str:
        """The first backend of the op's "auto" list for `device` that can run, else the reference."""
        order = (*self.auto.get(device.type, ()), "reference")
        return next(b for b in order if self.unavailable_reason(b, device) is None)

    def label(self, backend: str, device: torch.device) -> str:
        if backend == "triton" and device.type == "cpu":
            return BACKEND_LABELS["triton-interpreter"]
        return BACKEND_LABELS[backend]


OPS: dict[str, OpSpec] = {}


def register_op(
    name: str,
    backends: Sequence[str],
    auto: dict[str, Sequence[str]],
    extension_ops: Sequence[str] = (),
) -> OpSpec:
    """Declare an op's backends (called once, at import of the op's module)."""
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend '{b}' for op '{name}'; known: {BACKENDS}")
    spec = OpSpec(
        name=name,
        backends=tuple(backends),
        auto={k: tuple(v) for k, v in auto.items()},
        extension_ops=tuple(extension_ops),
    )
    OPS[name] = spec
    return spec


_process_default = "auto"


def set_default_backend(backend: str) -> None:
    """Make `backend` what "auto" means for every op that has it in this process ("auto" restores
    the choice; ops without that backend keep their own "auto" choice).

    The trainer's `ops.backend=reference` uses this to switch every fast op off for comparison.
    """
    global _process_default
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got '{backend}'")
    _process_default = backend


def get_default_backend() -> str:
    return _process_default


def select_backend(op: str, backend: str, device: torch.device) -> str:
    """Resolve `backend` ("auto" or a name) for op `op` on `device`.

    Raises ValueError for an unknown name and RuntimeError for a forced backend that cannot run.
    An "auto" request follows `set_default_backend` when a process-wide default is set and the op
    has that backend (e.g. `ops.backend=cuda` forces the CUDA extension for the PnP ops and leaves
    the Triton ops on their own "auto" choice).
    """
    spec = OPS[op]
    if backend == "auto" and _process_default != "auto" and _process_default in spec.backends:
        backend = _process_default
    if backend == "auto":
        choice = spec.auto_choice(device)
        preferred = [b for b in spec.auto.get(device.type, ()) if b in spec.backends]
        if choice == "reference" and preferred:
            reasons = "; ".join(f"{b}: {spec.unavailable_reason(b, device)}" for b in preferred)
            warn_once(f"vpog.ops.{op}: using the PyTorch reference path on {device.type} ({reasons})")
        return choice
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got '{backend}'")
    reason = spec.unavailable_reason(backend, device)
    if reason is not None:
        raise RuntimeError(f"vpog.ops.{op}: backend '{backend}' cannot run: {reason}")
    return backend
