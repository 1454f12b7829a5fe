#!/usr/bin/env python
"""Compile vpog's Triton kernels for Hopper (sm_90) on a machine without a GPU; report registers,
spills and shared memory of every configuration the GPU path can launch.

    python scripts/triton_sm90_report.py OUT.md [--json OUT.json] [--head-dims 32,64,128]
        [--dtypes bf16,fp16,fp32] [--seq 197,1378] [--subset] [--keys]

How the configurations are found (nothing is restated by hand, so the report follows the code):
- The host launchers of `kernels/*.py` (s2rope_attention_fwd / _bwd, s2rope_rotate,
  patch_flow_labels_fwd) are called on meta tensors laid out as the model lays them out (q, k, v
  views of one qkv projection, grad_o the transpose of a [B, N, H*D] gradient, pos [B, N, 4]),
  with a `launch` callable that records each `vpog.kernels.launch.Launch` instead of running it:
  the pointer dtypes, strides, int arguments and constexprs are exactly what the GPU would receive.
- Autotuned kernels: every config left by the kernel's own pruner for that launch (head dim, N
  bucket, dtype); `default` marks the one taken with VPOG_TRITON_AUTOTUNE=0.
- patch_flow_labels: its CUDA launch (block_p=4, num_warps=4; the launcher picks block_p 64 only for
  CPU tensors, so it is passed here explicitly).

Compiling uses Triton's public ahead-of-time API only: `triton.compile(ASTSource(fn, signature,
constexprs, attrs), target=GPUTarget("cuda", 90, 64), options=...)`, with the arguments specialised
as Triton's JIT does at a launch (`specialise`: ints equal to 1 become constants; ints and tensor
addresses divisible by 16 get a divisibility hint). Registers and spills come from the log of
Triton's bundled ptxas (TRITON_DUMP_PTXAS_LOG=1); shared memory is the dynamic shared memory Triton
launches with. A Triton without this API fails the run with the missing name, never silently.
Problems: FAILED (did not compile), SPILLS (any spill store or load), SMEM (more than the 227 KB an
H100 block may use); note: regs@max (255 registers, no spill: at the limit, fine but with no headroom).
CTAs/SM is the occupancy bound from registers, shared memory and warps (H100: 64K registers,
228 KB shared memory, 64 warps, 32 CTAs per SM).

`--keys` also records the autotuning key and the specialisation of each launch over batch sizes and
sequence lengths (a change of B must never recompile). Compiles go to a fresh Triton cache
directory, so the compile times are real.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Triton kernels must be JIT functions, not the interpreter's: decide before triton is imported.
if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise RuntimeError("import this module before triton when TRITON_INTERPRET is set (or run it as a script)")
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # Triton prints ptxas -v's log (registers, spills) to stdout
os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # ... which a cache hit would skip

import torch  # noqa: E402
import triton  # noqa: E402

try:
    import vpog  # noqa: F401
except ImportError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime import Autotuner, JITFunction  # noqa: E402
from vpog.kernels import patch_flow_labels as pfl_kernels  # noqa: E402
from vpog.kernels import s2rope_attention as attn_kernels  # noqa: E402
from vpog.kernels import s2rope_rotate as rotate_kernels  # noqa: E402
from vpog.kernels.launch import Launch  # noqa: E402

log = logging.getLogger("triton_sm90_report")

TARGET = GPUTarget("cuda", 90, 64)
H100_SMEM_PER_BLOCK = 227 * 1024  # opt-in dynamic shared memory per block
H100_SMEM_PER_SM = 228 * 1024
H100_REGS_PER_SM = 65536
MAX_REGS = 255
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Model shapes (docs/conventions.md): per-image blocks B = 224 images, group blocks B = 32 samples, H = 12.
HEADS = 12
BATCH_IMAGE, BATCH_GROUP = 224, 32
LABELS_BATCH, LABELS_TEMPLATES, CROP, PATCH = 32, 6, 224, 16
LABELS_CUDA_LAUNCH = {"block_p": 4, "num_warps": 4}  # patch_flow_labels_fwd's defaults for CUDA tensors
# (block_p, num_warps) the kernel benchmark (benchmarks/test_bench_patch_flow_labels.py) also launches
LABELS_BENCH_LAUNCHES = ((1, 2), (2, 2), (2, 4), (4, 8), (8, 8))
PROBLEMS = {"SPILLS", "SMEM"}
KERNEL_ORDER = ("attn_fwd", "attn_bwd_delta", "attn_bwd_dkdv", "attn_bwd_dq", "rotate", "rotate_inv", "labels")
KERNELS = (  # kernel object -> report name
    (attn_kernels._s2rope_attention_fwd_kernel, "attn_fwd"),
    (attn_kernels._bwd_delta_kernel, "attn_bwd_delta"),
    (attn_kernels._s2rope_attention_bwd_dkdv_kernel, "attn_bwd_dkdv"),
    (attn_kernels._s2rope_attention_bwd_dq_kernel, "attn_bwd_dq"),
    (rotate_kernels._s2rope_rotate_kernel, "rotate"),
    (pfl_kernels._patch_flow_labels_fwd_kernel, "labels"),
)
# Triton's pointer element types (the `*<type>` of a signature)
POINTER_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
                 torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8", torch.int8: "i8"}


# ------------------------------------------------------------------------------------------------
# Capturing launches from the host launchers


@dataclass
class Captured:
    """One recorded kernel launch, its report name and the case it belongs to."""

    name: str
    call: Launch
    case: dict = field(default_factory=dict)


def _capture(run_launchers) -> list[Captured]:
    """Call `run_launchers(launch)` with a `launch` that records; -> the launches, named."""
    calls: list[Launch] = []
    run_launchers(calls.append)
    out = []
    for call in calls:
        name = next((n for k, n in KERNELS if k is call.kernel), None)
        if name is None:
            raise RuntimeError(f"a launcher launched a kernel this report does not know: {call.kernel}")
        if name == "rotate" and call.constexprs.get("INVERSE"):
            name = "rotate_inv"
        out.append(Captured(name, call))
    return out


def _meta(shape, dtype):
    return torch.empty(shape, dtype=dtype, device="meta")


def _model_qkv(B, H, N, D, dtype):
    """q, k, v as RotaryAttention makes them: views of one [B, N, 3, H, D] projection."""
    qkv = _meta((B, N, 3, H, D), dtype).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def attention_launches(dtype, D, B, H, N):
    """Launches of the fused attention: forward, backward delta, dK/dV and dQ."""
    q, k, v = _model_qkv(B, H, N, D, dtype)
    pos = _meta((B, N, 4), torch.float32)
    pair_idx, pair_freq = _meta((2, D // 2), torch.int32), _meta((4, D // 2), torch.float32)
    # the model's output projection sees o.transpose(1, 2).reshape(B, N, H * D): its gradient
    grad_o = _meta((B, N, H, D), dtype).transpose(1, 2)

    def launchers(launch):
        attn_kernels.check_fused_inputs(q, pair_idx, pair_freq)
        o, lse = attn_kernels.s2rope_attention_fwd(q, k, v, pos, pair_idx, pair_freq, launch=launch)
        attn_kernels.s2rope_attention_bwd(grad_o, q, k, v, o, lse, pos, pair_idx, pair_freq, launch=launch)

    return _capture(launchers)


def rotate_launches(dtype, D, B, H, N):
    """Launches of the rotation pre-pass: forward (q, k) and the backward's inverse rotation."""
    q, k, _ = _model_qkv(B, H, N, D, dtype)
    pos = _meta((B, N, 4), torch.float32)
    pair_idx, pair_freq = _meta((2, D // 2), torch.int32), _meta((4, D // 2), torch.float32)
    grad = _meta((B, H, N, D), dtype)  # SDPA's gradients are contiguous

    def launchers(launch):
        rotate_kernels.s2rope_rotate(q, k, pos, pair_idx, pair_freq, launch=launch)
        rotate_kernels.s2rope_rotate(grad, torch.empty_like(grad), pos, pair_idx, pair_freq, inverse=True,
                                     launch=launch)

    return _capture(launchers)


def labels_launches(B, S, size=CROP, variants=()):
    """Launch of the patch-flow labels kernel at its CUDA block size (then at each (block_p, num_warps)
    of `variants`, marked non-default)."""
    f32 = torch.float32
    inputs = (_meta((B, size, size), f32), _meta((B, size, size), torch.bool), _meta((B, 3, 3), f32),
              _meta((B, 4, 4), f32), _meta((B, S, size, size), f32), _meta((B, S, size, size), torch.bool),
              _meta((B, S, 3, 3), f32), _meta((B, S, 4, 4), f32), _meta((B,), f32))

    def launchers(launch):
        pfl_kernels.patch_flow_labels_fwd(*inputs, patch_size=PATCH, **LABELS_CUDA_LAUNCH, launch=launch)
        for block_p, num_warps in variants:
            pfl_kernels.patch_flow_labels_fwd(*inputs, patch_size=PATCH, block_p=block_p, num_warps=num_warps,
                                              launch=launch)

    calls = _capture(launchers)
    for i, c in enumerate(calls):
        c.case["default"] = i == 0
    return calls


# ------------------------------------------------------------------------------------------------
# Specialisation and configs, as Triton's launcher does them


def _jit_fn(kernel) -> JITFunction:
    """The @triton.jit function of a kernel (an autotuned kernel wraps it as `.fn`)."""
    return kernel.fn if isinstance(kernel, Autotuner) else kernel


def autotune_key(c: Captured):
    """The autotuner's cache key for this launch (its `key` arguments, then every tensor's dtype)."""
    kernel = c.call.kernel
    if not isinstance(kernel, Autotuner):
        return None
    all_args = {**dict(zip(kernel.arg_names, c.call.args)), **c.call.constexprs}
    args = {k: v for k, v in all_args.items() if k in kernel.arg_names}
    key = [args[k] for k in kernel.keys if k in args]
    key += [str(v.dtype) for v in args.values() if hasattr(v, "dtype")]
    return tuple(key)


def configs_of(c: Captured):
    """[(config or None, is_default)] the GPU path may compile for this launch (None: not autotuned)."""
    kernel = c.call.kernel
    if not isinstance(kernel, Autotuner):
        return [(None, True)]
    nargs = dict(zip(kernel.arg_names, c.call.args))

    def pruned():
        configs = kernel.configs
        if kernel.early_config_prune and len(configs) > 1:
            configs = kernel.early_config_prune(configs, nargs, **c.call.constexprs)
        return configs

    saved = os.environ.get("VPOG_TRITON_AUTOTUNE")
    try:
        os.environ["VPOG_TRITON_AUTOTUNE"] = "0"
        default = pruned()[0]
        os.environ["VPOG_TRITON_AUTOTUNE"] = "1"
        configs = pruned()
    finally:
        if saved is None:
            os.environ.pop("VPOG_TRITON_AUTOTUNE", None)
        else:
            os.environ["VPOG_TRITON_AUTOTUNE"] = saved
    return [(cfg, cfg is default) for cfg in configs]


def _specialise_value(fn_name: str, name: str, value):
    """(signature type, divisibility hint, constant) of one runtime argument, as Triton's JIT sees it."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in POINTER_TYPES:
            raise ValueError(f"{fn_name}: argument {name} has dtype {value.dtype}, not in {list(POINTER_TYPES)}")
        # device allocations are 256-byte aligned: the storage offset decides the address's alignment
        return "*" + POINTER_TYPES[value.dtype], value.storage_offset() * value.element_size() % 16 == 0, None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{fn_name}: runtime argument {name} = {value!r}: only tensors, ints and floats are passed")
    if isinstance(value, float):
        return "fp32", False, None  # floats are never specialised
    if value == 1:
        return "constexpr", False, 1
    return ("i32" if -2**31 <= value < 2**31 else "i64"), value % 16 == 0, None


def specialise(c: Captured, config):
    """(jit fn, key, signature, constexprs, attrs, options) of launch `c` compiled with autotune `config`.

    The specialisation of a launch by Triton's JIT: tensor arguments are `*<dtype>` pointers, with a
    divisibility hint of 16 when their address is a multiple of 16; int arguments equal to 1 become
    constants, others are i32 (i64 beyond int32) with a divisibility hint when divisible by 16; float
    arguments are fp32. `constexprs` are the launch's and the config's. `key` identifies the compiled
    kernel (for deduplication and the --keys survey).
    """
    fn = _jit_fn(c.call.kernel)
    names = list(fn.arg_names)
    constexprs = {k: v for k, v in c.call.constexprs.items() if k in names}
    options = {k: v for k, v in c.call.constexprs.items() if k not in names}  # num_warps of a plain kernel
    if config is not None:
        constexprs.update(config.kwargs)
        options.update({k: v for k, v in config.all_kwargs().items() if k not in config.kwargs})
    options.setdefault("enable_fp_fusion", True)  # a default launch's, stated (Triton warns about the default)
    signature, attrs, key = {}, {}, []
    for i, name in enumerate(names):
        if i < len(c.call.args):
            ty, divisible, constant = _specialise_value(fn.__name__, name, c.call.args[i])
            signature[name] = ty
            if constant is not None:
                constexprs[name] = constant
            if divisible:
                attrs[(i,)] = [["tt.divisibility", 16]]
            key.append((name, ty, constant if constant is not None else divisible))
        elif name in constexprs:
            signature[name] = "constexpr"
            key.append((name, "constexpr", constexprs[name]))
        else:
            raise ValueError(f"{fn.__name__}: the launch gives no value for parameter {name}")
    key.append(("options", json.dumps(options, sort_keys=True)))
    return fn, tuple(key), signature, constexprs, attrs, options


# ------------------------------------------------------------------------------------------------
# Compiling


@dataclass
class Row:
    kernel: str
    config: str
    default: bool
    dtype: str
    head_dim: int | None
    n_bucket: str
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    smem: int | None = None
    num_warps: int | None = None
    mma: str = ""
    ctas_per_sm: int | None = None
    compile_s: float = 0.0
    cubin_bytes: int = 0
    ptxas: str = ""
    flags: list = field(default_factory=list)
    error: str | None = None


_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_CUBIN_TOOLKIT = re.compile(rb"compilation tools, release (\d+\.\d+)")


def parse_ptxas_log(text: str) -> dict:
    """Registers, stack and spills from ptxas -v's log; RuntimeError when the log has none."""
    spill, regs = _PTXAS_SPILL.search(text), _PTXAS_REGS.search(text)
    if not (spill and regs):
        raise RuntimeError(f"no ptxas -v log in triton {triton.__version__}'s output (does it honour "
                           f"TRITON_DUMP_PTXAS_LOG=1?):\n{text[-2000:]}")
    return {"regs": int(regs.group(1)), "stack": int(spill.group(1)), "spill_stores": int(spill.group(2)),
            "spill_loads": int(spill.group(3))}


def ctas_per_sm(regs: int, smem: int, num_warps: int) -> int:
    """Occupancy bound on an H100 SM (registers allocated per warp in units of 8 per thread)."""
    by_regs = (H100_REGS_PER_SM // (math.ceil(regs / 8) * 8 * 32)) // num_warps
    by_smem = H100_SMEM_PER_SM // (smem + 1024) if smem else 32  # 1 KB reserved per CTA
    return min(by_regs, by_smem, 64 // num_warps, 32)


def compile_spec(fn, signature, constexprs, attrs, options) -> dict:
    """triton.compile for sm_90; -> measured fields of a Row (or its error)."""
    out = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out):  # ptxas's log (TRITON_DUMP_PTXAS_LOG, set above)
            kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=TARGET, options=options)
    except Exception as exc:  # a config that does not compile is a result to report
        return {"compile_s": time.perf_counter() - start, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    elapsed = time.perf_counter() - start
    ptx, cubin = kernel.asm["ptx"], kernel.asm["cubin"]
    res = parse_ptxas_log(out.getvalue())
    tool = _CUBIN_TOOLKIT.search(cubin)  # the cubin's tool note names the ptxas that built it
    res.update(smem=int(kernel.metadata.shared), num_warps=int(kernel.metadata.num_warps), compile_s=elapsed,
               mma="wgmma" if "wgmma.mma_async" in ptx else "mma" if "mma.sync" in ptx else "fma",
               cubin_bytes=len(cubin), ptxas=tool.group(1).decode() if tool else "unknown")
    return res


def flags_of(row: Row) -> list:
    if row.error:
        return ["FAILED"]
    flags = []
    if row.spill_stores or row.spill_loads:
        flags.append("SPILLS")
    if row.smem > H100_SMEM_PER_BLOCK:
        flags.append("SMEM")
    if row.regs >= MAX_REGS:
        flags.append("regs@max")
    return flags


def _config_str(config, c: Captured) -> str:
    if config is None:  # not autotuned: the launch's own constexprs
        given = c.call.constexprs
        parts = [f"{k}={given[k]}" for k in ("BLOCK", "BLOCK_P") if k in given]
        return " ".join(parts + [f"w{given.get('num_warps', 4)}"])
    blocks = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{blocks} w{config.num_warps} s{config.num_stages}"


# ------------------------------------------------------------------------------------------------
# The plan: which launches to compile


def plan(head_dims, dtypes, seqs, subset: bool):
    """All launches to compile. subset: the test's representative set (default configs only)."""
    launches = []
    for D in head_dims:
        for dt in dtypes:
            for N in seqs:
                B = BATCH_IMAGE if N < 256 else BATCH_GROUP
                for c in attention_launches(DTYPES[dt], D, B, HEADS, N):
                    c.case = {"dtype": dt, "head_dim": D, "N": N}
                    launches.append(c)
                for c in rotate_launches(DTYPES[dt], D, B, HEADS, N):
                    c.case = {"dtype": dt, "head_dim": D, "N": N}
                    launches.append(c)
    for c in labels_launches(LABELS_BATCH, LABELS_TEMPLATES, variants=() if subset else LABELS_BENCH_LAUNCHES):
        c.case.update(dtype="fp32", head_dim=None, N=None)
        launches.append(c)
    if subset:
        launches = [c for c in launches if _in_subset(c)]
    return launches


def _in_subset(c: Captured) -> bool:
    """Each kernel once; every dtype of the forward at D = 64; D = 32 and 128 once each (bf16 forward)."""
    dt, D = c.case["dtype"], c.case["head_dim"]
    if c.name == "attn_fwd":
        return D == 64 or dt == "bf16"
    if c.name in ("attn_bwd_dkdv", "attn_bwd_dq", "attn_bwd_delta", "rotate"):
        return D == 64 and dt == "bf16"
    return c.name == "labels"


def build_rows(launches, subset: bool, progress: bool):
    """Specialise, dedupe and compile; -> (rows, number of unique compiles)."""
    jobs, rows, seen = [], [], {}
    for launch in launches:
        bucket = str(attn_kernels.n_bucket(launch.case["N"])) if launch.case["N"] else "-"
        for config, default in configs_of(launch):
            default = default and launch.case.get("default", True)
            if subset and not default:
                continue
            fn, key, signature, constexprs, attrs, options = specialise(launch, config)
            row = Row(kernel=launch.name, config=_config_str(config, launch), default=default,
                      dtype=launch.case["dtype"], head_dim=launch.case["head_dim"], n_bucket=bucket)
            ident = (fn.__name__, key)
            if ident not in seen:
                seen[ident] = len(jobs)
                jobs.append((fn, signature, constexprs, attrs, options))
            rows.append((row, seen[ident]))
    results = [None] * len(jobs)
    for i in _progress(range(len(jobs)), progress, "compiling for sm_90"):
        results[i] = compile_spec(*jobs[i])
    merged: dict = {}  # one row per compiled kernel: the N buckets that launch it are listed together
    for row, job in rows:
        key = (row.kernel, row.config, row.dtype, row.head_dim, job)
        if key in merged:
            if row.n_bucket not in merged[key].n_bucket.split(","):
                merged[key].n_bucket += f",{row.n_bucket}"
            continue
        merged[key] = row
        for k, v in results[job].items():
            setattr(row, k, v)
        if not row.error:
            row.ctas_per_sm = ctas_per_sm(row.regs, row.smem, row.num_warps)
        row.flags = flags_of(row)
    order = {name: i for i, name in enumerate(KERNEL_ORDER)}
    out = sorted(merged.values(), key=lambda r: (order.get(r.kernel, len(order)), r.head_dim or 0,
                                                 list(DTYPES).index(r.dtype), not r.default, r.config))
    return out, len(jobs)


def _progress(items, enabled, desc):
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:  # plain: one line per kernel
        return (print(f"{desc}: {i + 1}/{len(items)}", file=sys.stderr, flush=True) or x for i, x in enumerate(items))
    return tqdm(items, desc=desc, unit="kernel", file=sys.stderr)


# ------------------------------------------------------------------------------------------------
# Specialisation keys over B and N


def key_survey(head_dim=64, dtype="bf16", batches=(1, 2, 7, 32, 224), seqs=None):
    """Autotuning key and Triton specialisation of every launch across batch sizes and sequence lengths.

    -> {launch name: [{"B", "N", "autotune_key", "spec"}]}; the spec is taken with the launch's
    default config (configs do not depend on B; they depend on N only through the autotune key).
    """
    seqs = seqs or (1, 2, 15, 16, 17, 100, 128, 129, 196, 197, 200, 255, 256, 257, 1000, 1378, 1379, 2048)
    survey: dict = {}

    def add(calls, B, N):
        for c in calls:
            configs = configs_of(c)
            key = specialise(c, next((cfg for cfg, default in configs if default), configs[0][0]))[1]
            survey.setdefault(c.name, []).append({"B": B, "N": N, "autotune_key": _jsonable(autotune_key(c)),
                                                 "spec": _jsonable(key)})

    dt = DTYPES[dtype]
    for B in batches:
        for N in seqs:
            add(attention_launches(dt, head_dim, B, HEADS, N), B, N)
            add(rotate_launches(dt, head_dim, B, HEADS, N), B, N)
        add(labels_launches(B, LABELS_TEMPLATES), B, None)
    return survey


def _jsonable(x):
    return json.loads(json.dumps(x, default=str)) if x is not None else None


def summarise_keys(survey: dict) -> list:
    """Per launch: distinct specialisations over B (for fixed N) and over N within one autotune bucket."""
    lines = []
    for name, entries in survey.items():
        by_n, by_bucket = {}, {}
        for e in entries:
            by_n.setdefault(e["N"], set()).add(json.dumps(e["spec"]))
            bucket = json.dumps(e["autotune_key"])
            by_bucket.setdefault(bucket, set()).add(json.dumps(e["spec"]))
        worst_b = max(len(v) for v in by_n.values())
        worst_n = max(len(v) for v in by_bucket.values())
        lines.append({"kernel": name, "max_specs_over_B": worst_b, "max_specs_per_autotune_key": worst_n,
                      "autotune_keys": len(by_bucket)})
    return lines


# ------------------------------------------------------------------------------------------------
# Output


COLUMNS = ("kernel", "config", "default", "dtype", "head_dim", "n_bucket", "regs", "spill_stores",
           "spill_loads", "smem", "mma", "ctas_per_sm", "compile_s", "flags")
HEADERS = ("kernel", "config", "dflt", "dtype", "D", "N bkt", "regs", "spill st", "spill ld", "smem B",
           "mma", "CTA/SM", "compile s", "flags")


def _cell(row: Row, col: str) -> str:
    v = getattr(row, col)
    if col == "default":
        return "*" if v else ""
    if col == "compile_s":
        return f"{v:.1f}"
    if col == "flags":
        return " ".join(v)
    return "-" if v is None else str(v)


def render_markdown(rows, meta, key_lines=None) -> str:
    lines = [f"# Triton kernels compiled for sm_90 ({meta['date']})", "",
             f"triton {meta['triton']}, ptxas: {meta['ptxas']}, target {meta['target']}. "
             f"{meta['compiles']} unique compiles, {meta['rows']} rows, {meta['failed']} failed, "
             f"{meta['problems']} with a problem (SPILLS / SMEM), {meta['wall_s']:.0f} s.", "",
             "`dflt`: the config taken with VPOG_TRITON_AUTOTUNE=0. smem: dynamic shared memory per block "
             f"(H100 limit {H100_SMEM_PER_BLOCK} B). CTA/SM: occupancy bound from registers, shared memory "
             "and warps.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c) for c in COLUMNS) + " |")
    errors = [r for r in rows if r.error]
    if errors:
        lines += ["", "## Errors", ""]
        for r in errors:
            lines += [f"- {r.kernel} {r.config} {r.dtype} D={r.head_dim}:", "", "```", r.error, "```"]
    if key_lines:
        lines += ["", "## Specialisation over B and N", "",
                  "Distinct compiled specialisations of each launch (default config) over the surveyed batch sizes "
                  "(fixed N) and over the sequence lengths sharing one autotuning key.", "",
                  "| kernel | max over B | max per autotune key | autotune keys |", "|---|---|---|---|"]
        for k in key_lines:
            lines.append(f"| {k['kernel']} | {k['max_specs_over_B']} | {k['max_specs_per_autotune_key']} | "
                         f"{k['autotune_keys']} |")
    return "\n".join(lines) + "\n"


def render_console(rows) -> str:
    table = [HEADERS] + [tuple(_cell(r, c) for c in COLUMNS) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", help="markdown report to write")
    parser.add_argument("--json", type=Path, help="also write rows (and key survey) as JSON")
    parser.add_argument("--head-dims", default="32,64,128")
    parser.add_argument("--dtypes", default="bf16,fp16,fp32")
    parser.add_argument("--seq", default="197,1378", help="sequence lengths (one per N bucket the pruner tells apart)")
    parser.add_argument("--subset", action="store_true", help="the test's representative subset, default configs only")
    parser.add_argument("--keys", action="store_true", help="survey specialisation keys over B and N")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no console table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.out is None and args.json is None:
        parser.error("give a markdown path and/or --json")

    with tempfile.TemporaryDirectory(prefix="triton_sm90_") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # nothing of this run lands in the user's Triton cache
        start = time.perf_counter()
        head_dims = [int(x) for x in args.head_dims.split(",")]
        seqs = [int(x) for x in args.seq.split(",")]
        dtypes = args.dtypes.split(",")
        for dt in dtypes:
            if dt not in DTYPES:
                parser.error(f"--dtypes: unknown dtype {dt!r}; choose from {sorted(DTYPES)}")
        launches = plan(head_dims, dtypes, seqs, args.subset)
        rows, compiles = build_rows(launches, args.subset, progress=not args.quiet)
        survey = key_survey() if args.keys else None
        key_lines = summarise_keys(survey) if survey else None
        ptxas = ", ".join(sorted({r.ptxas for r in rows if r.ptxas})) or "-"
        meta = {"date": time.strftime("%Y-%m-%d"), "triton": triton.__version__, "ptxas": ptxas,
                "target": f"{TARGET.backend} sm_{TARGET.arch}", "compiles": compiles, "rows": len(rows),
                "failed": sum(bool(r.error) for r in rows),
                "problems": sum(bool(PROBLEMS & set(r.flags)) for r in rows),
                "wall_s": time.perf_counter() - start}
    if not args.quiet:
        print(render_console(rows))
    if args.out:
        args.out.write_text(render_markdown(rows, meta, key_lines))
        log.info("wrote %s", args.out)
    if args.json:
        payload = {"meta": meta, "rows": [asdict(r) for r in rows]}
        if survey:
            payload["keys"] = survey
            payload["key_summary"] = key_lines
        args.json.write_text(json.dumps(payload, indent=1))
        log.info("wrote %s", args.json)
    log.info("%d rows, %d unique compiles, %d failed, %d with spills or too much shared memory, %.0f s",
             meta["rows"], compiles, meta["failed"], meta["problems"], meta["wall_s"])
    return 1 if meta["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
