"""Every Triton kernel compiles for Hopper (sm_90) ahead of time, without a GPU.

`scripts/triton_sm90_report.py --subset --keys` runs in a subprocess: it records the launches of
the real host launchers (meta tensors, model layouts), specialises them as Triton's JIT does and
compiles each kernel's default config through Triton's public ahead-of-time API
(`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 64))`) with Triton's bundled ptxas.
The subset: every kernel once, the attention forward in every dtype at D = 64 and in bf16 at D = 32
and 128, the backward kernels, the rotation and the labels kernel.

A subprocess because tests/conftest.py sets TRITON_INTERPRET=1 on machines without CUDA, and then
@triton.jit yields interpreter functions, which cannot be compiled; the script unsets it before
importing triton. Skipped only where triton is not installed: a Triton without the API (or without
its NVIDIA backend and ptxas) fails these tests, naming what is missing.

The full matrix (every autotune config, dtype, head dim and N bucket) is the script's default
run; see docs/s2rope_attention.md, "Compiled for sm_90 without a GPU".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (the Triton kernels are optional)")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "triton_sm90_report.py"
H100_SMEM_PER_BLOCK = 227 * 1024
KERNELS = {"attn_fwd", "attn_bwd_delta", "attn_bwd_dkdv", "attn_bwd_dq", "rotate", "labels"}
DOT_KERNELS = {"attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sm90") / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--subset", "--keys", "--quiet", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    if not out.exists():
        pytest.fail(f"triton_sm90_report.py exited {proc.returncode} without a report:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def _label(r):
    return f"{r['kernel']} {r['config']} {r['dtype']} D={r['head_dim']}"


def test_every_kernel_compiles_to_a_cubin(report):
    rows = report["rows"]
    assert {r["kernel"] for r in rows} >= KERNELS
    fwd = {(r["dtype"], r["head_dim"]) for r in rows if r["kernel"] == "attn_fwd"}
    assert fwd >= {("bf16", 64), ("fp16", 64), ("fp32", 64), ("bf16", 32), ("bf16", 128)}
    failed = [f"{_label(r)}: {r['error']}" for r in rows if r["error"]]
    assert not failed, "\n".join(failed)
    for r in rows:
        assert r["cubin_bytes"] > 0, _label(r)
        assert 0 < r["regs"] <= 255, _label(r)


def test_within_h100_limits_without_spills(report):
    """Shared memory within 227 KB per block, at least one CTA per SM, no register spills."""
    for r in report["rows"]:
        assert r["smem"] <= H100_SMEM_PER_BLOCK, f"{_label(r)}: {r['smem']} B shared memory"
        assert r["ctas_per_sm"] >= 1, _label(r)
        spills = f"{r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{_label(r)}: {spills} at {r['regs']} registers"


def test_16bit_attention_uses_wgmma(report):
    """fp16 / bf16 dots run on Hopper's warpgroup MMA; fp32 (IEEE) dots on the FMA units."""
    for r in report["rows"]:
        if r["kernel"] in DOT_KERNELS:
            expected = "fma" if r["dtype"] == "fp32" else "wgmma"
            assert r["mma"] == expected, f"{_label(r)}: {r['mma']}"


def _n_bucket(n):
    return 1 << (max(n, 16) - 1).bit_length()


def test_batch_size_never_changes_the_compiled_kernel(report):
    """B enters neither an autotuning key nor Triton's specialisation (only the grid)."""
    keys = report["keys"]
    assert set(keys) >= KERNELS | {"rotate_inv"}
    for name, entries in keys.items():
        by_n = {}
        for e in entries:
            by_n.setdefault(e["N"], set()).add(json.dumps([e["autotune_key"], e["spec"]]))
        batches = {e["B"] for e in entries}
        assert len(batches) >= 3, name
        for n, variants in by_n.items():
            assert len(variants) == 1, f"{name}, N = {n}: {len(variants)} keys over B = {sorted(batches)}"


def test_sequence_length_recompiles_only_per_bucket_and_alignment(report):
    """Autotuning keys on N's bucket (next power of two >= 16). Within a bucket Triton compiles one
    variant per alignment class of N: N = 1 (a constant), N % 16 == 0, and (through pos's batch
    stride 4 N) N % 4 == 0; nothing else about N (and nothing about B) reaches the compiled kernel."""
    for name, entries in report["keys"].items():
        if name == "labels":
            continue
        classes = {}
        for e in entries:
            n = e["N"]
            if e["autotune_key"] is not None:
                assert e["autotune_key"][0] == _n_bucket(n), f"{name}: N = {n} keyed {e['autotune_key']}"
            cls = (json.dumps(e["autotune_key"]), n == 1, n % 16 == 0, n % 4 == 0)
            classes.setdefault(cls, set()).add(json.dumps(e["spec"]))
        for cls, specs in classes.items():
            assert len(specs) == 1, f"{name}: {len(specs)} specialisations for the class {cls}"
