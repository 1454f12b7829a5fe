"""How vpog's Triton kernels are launched; importable without triton.

- `triton_interpreter()`: whether `@triton.jit` kernels run on the CPU through Triton's interpreter
  (TRITON_INTERPRET=1). The kernels pick their configs and their cos / sin by it, and `vpog._backend`
  lets Triton take CPU tensors only then.
- `Launch`: one kernel launch as a host launcher builds it. Every launcher in `vpog.kernels` hands
  its launches to a `launch` callable, by default `run`; `scripts/triton_sm90_report.py` passes one
  that records them instead, and compiles the kernels for sm_90 from exactly these arguments.
  Runtime arguments are positional, `tl.constexpr` arguments go by name.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, NamedTuple

import torch


def triton_interpreter() -> bool:
    """True when Triton kernels run on the CPU through the interpreter (TRITON_INTERPRET set, not 0)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class Launch(NamedTuple):
    """One kernel launch: `kernel[grid](*args, **constexprs)`.

    kernel: a `@triton.jit` function or its `@triton.autotune` wrapper (which adds its config's
        block sizes, warps and stages).
    grid: a tuple, or a callable of the launch's meta-parameters (for autotuned block sizes).
    args: the runtime arguments (tensors, ints, floats), in the kernel's parameter order.
    constexprs: the `tl.constexpr` arguments by name, plus `num_warps` for a kernel that is not autotuned.
    """

    kernel: Any
    grid: Any
    args: tuple
    constexprs: dict


def run(call: Launch) -> None:
    """Launch `call` on the device of its first tensor (Triton launches on the current CUDA device)."""
    first = next(a for a in call.args if isinstance(a, torch.Tensor))
    guard = torch.cuda.device(first.device) if first.is_cuda else contextlib.nullcontext()
    with guard:
        call.kernel[call.grid](*call.args, **call.constexprs)
