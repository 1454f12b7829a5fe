"""pytest-benchmark setup for vpog.

- `run_bench(benchmark, fn, *args, backend=..., op=..., items=..., unit=...)` times `fn(*args)`,
  synchronising CUDA inside the timed call so kernel time is measured, not launch time, and stores
  the backend, op and throughput (`items` per second, e.g. solves/s or GB/s) in `extra_info`.
- The saved JSON's machine_info holds the device name, torch, triton and CUDA versions and the git
  commit (`vpog.info.collect()`), so every number can be traced to its card and versions.
- At the end of the session each fast path is compared with the reference path of the same
  group (same op and size, same run): the ratio is printed and stored as `extra_info["speedup_vs_reference"]`.

Without CUDA (the repository's conftest.py), cases marked `cuda` skip and Triton runs through the
interpreter (correct, not fast: interpreter timings are not performance numbers).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import torch


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except Exception:
        return "unknown"


def pytest_benchmark_update_machine_info(config, machine_info):
    from vpog.info import collect

    info = collect()
    machine_info["vpog"] = {k: info[k] for k in (
        "vpog", "torch", "torch_cuda", "triton", "triton_interpreter", "extension",
        "extension_cuda_kernels", "device", "device_capability",
    )}
    machine_info["vpog"]["commit"] = _git_commit()


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@pytest.fixture
def run_bench():
    """Time `fn(*args, **kwargs)` with CUDA synchronised around each call; returns fn's result."""

    def _run(benchmark, fn, *args, backend: str = "reference", op: str = "", items: float | None = None,
             unit: str = "items", **kwargs):
        def timed():
            out = fn(*args, **kwargs)
            _sync()
            return out

        fn(*args, **kwargs)  # warm-up: compilation, autotuning, allocator
        _sync()
        benchmark.extra_info["backend"] = backend
        benchmark.extra_info["op"] = op
        result = benchmark(timed)
        stats = getattr(benchmark, "stats", None)
        if items is not None and stats is not None and stats.stats.mean > 0:
            benchmark.extra_info[f"{unit}_per_s"] = items / stats.stats.mean
        return result

    return _run


_RATIOS: list[str] = []


def pytest_benchmark_update_json(config, benchmarks, output_json):
    _add_ratios(output_json["benchmarks"])


def _add_ratios(benches):
    by_group: dict[str, list] = {}
    for b in benches:
        by_group.setdefault(b.get("group") or "", []).append(b)
    _RATIOS.clear()
    for group, items in by_group.items():
        ref = [b for b in items if b.get("extra_info", {}).get("backend") == "reference"]
        if not ref:
            continue
        ref_mean = ref[0]["stats"]["mean"]
        for b in items:
            backend = b.get("extra_info", {}).get("backend")
            if backend in (None, "reference"):
                continue
            ratio = ref_mean / b["stats"]["mean"]
            b["extra_info"]["speedup_vs_reference"] = ratio
            _RATIOS.append(f"{group}: {backend} {ratio:.2f}x vs reference "
                           f"({b['stats']['mean'] * 1e3:.3f} ms vs {ref_mean * 1e3:.3f} ms)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or not getattr(bs, "benchmarks", None):
        return
    benches = []
    for b in bs.benchmarks:
        if not b.stats:  # --benchmark-disable: nothing was timed
            continue
        benches.append({"group": b.group, "extra_info": b.extra_info,
                        "stats": {"mean": b.stats.mean}})
    if not _RATIOS:
        _add_ratios(benches)
    if _RATIOS:
        terminalreporter.section("vpog: fast path vs reference (same run)")
        for line in _RATIOS:
            terminalreporter.write_line(line)
