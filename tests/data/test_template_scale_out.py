"""Scale-out logic, on the CPU: shard parsing and splitting, EGL device choice per worker (pure functions: no GPU
here), and the process pool surviving a task that kills its worker."""

from __future__ import annotations

import os

import pytest

from vpog.data.scale_out import egl_device_for_worker, in_shard, parse_shard, shard_items


@pytest.mark.parametrize("value, env, expected", [
    ("0/1", {}, (0, 1)),
    ("3/8", {}, (3, 8)),
    (" 1 / 2 ", {}, (1, 2)),
    ([2, 4], {}, (2, 4)),
    (None, {}, (0, 1)),
    ("auto", {}, (0, 1)),
    (None, {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "16", "SLURM_ARRAY_TASK_MIN": "0"}, (5, 16)),
    (None, {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}, (6, 8)),
    ("auto", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (2, 4)),
    ("1/3", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}, (1, 3)),  # explicit wins
    (None, {"SLURM_JOB_ID": "9"}, (0, 1)),  # a SLURM job that is no array
])
def test_parse_shard(value, env, expected):
    assert parse_shard(value, env) == expected


@pytest.mark.parametrize("value, env, match", [
    ("2/2", {}, "0 <= i < n"),
    ("-1/2", {}, "0 <= i < n"),
    ("1/0", {}, "0 <= i < n"),
    ("1", {}, "'i/n'"),
    ("a/b", {}, "'i/n'"),
    (3, {}, "'i/n'"),
    (None, {"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}, "gaps or steps"),
    (None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"}, "integers"),
])
def test_parse_shard_rejects(value, env, match):
    with pytest.raises(ValueError, match=match):
        parse_shard(value, env)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 12])
def test_shards_partition_the_items(n):
    items = list(range(1, 11))  # object ids
    parts = [shard_items(items, (i, n)) for i in range(n)]
    assert sorted(x for p in parts for x in p) == items  # each item exactly once
    assert all(len(p) in (len(items) // n, -(-len(items) // n)) for p in parts)  # balanced
    assert parts == [shard_items(items, (i, n)) for i in range(n)]  # deterministic
    assert all(in_shard(pos, (i, n)) == (items[pos] in parts[i]) for i in range(n) for pos in range(len(items)))


def test_egl_device_round_robin_over_cuda_gpus():
    # 8 GPUs, each EGL device reporting its CUDA ordinal (EGL order need not be CUDA order), plus Mesa's device
    ordinals = [3, 2, 1, 0, 7, 6, 5, 4, None]
    devices = [egl_device_for_worker(k, ordinals) for k in range(10)]
    assert devices == [3, 2, 1, 0, 7, 6, 5, 4, 3, 2]  # worker k on CUDA GPU k % 8
    # CUDA_VISIBLE_DEVICES=5,6: EGL reports ordinals only for the two GPUs CUDA sees
    assert [egl_device_for_worker(k, [None, None, None, None, None, 0, 1, None]) for k in range(4)] == [5, 6, 5, 6]


def test_egl_device_fallbacks():
    # a driver without EGL_NV_device_cuda: CUDA_VISIBLE_DEVICES's integers are taken as EGL indices
    assert [egl_device_for_worker(k, [None] * 4, cuda_visible="2,3") for k in range(3)] == [2, 3, 2]
    assert egl_device_for_worker(0, [], cuda_visible="") is None  # no GPU visible
    assert egl_device_for_worker(1, [], cuda_visible="1,-1,3") == 1  # CUDA stops at the first invalid entry
    assert egl_device_for_worker(0, [], cuda_visible="GPU-1f2e3d4c") is None  # UUIDs cannot be mapped
    assert [egl_device_for_worker(k, [], physical_gpus=2) for k in range(3)] == [0, 1, 0]
    assert egl_device_for_worker(0, [], physical_gpus=0) is None  # a CPU machine: pyrender's default (Mesa)
    assert egl_device_for_worker(5, [0, 1], cuda_visible="0,1", egl_device_id="1") == 1  # the user's choice wins


# --------------------------------------------------------------------------------------------
# The process pool: module-level task functions (the spawned workers import this module)

_DEATH = {}


def _init(marker: str) -> None:
    _DEATH["marker"] = marker


def _close() -> None:
    _DEATH.clear()


def _task(n: int) -> dict:
    if n == 3:
        os._exit(13)  # as a driver's segmentation fault would end the process
    return {"id": n, "pid": os.getpid(), "egl": os.environ.get("EGL_DEVICE_ID"), "marker": _DEATH["marker"]}


def test_pool_survives_a_task_that_kills_its_worker():
    from vpog.data.render_pool import WorkerCrashError, run_tasks

    results = run_tasks(_task, list(range(6)), 2, _init, ("ok",), _close, "test", progress=False,
                        crashed=lambda task, reason: {"id": task, "crashed": reason})
    by_id = {r["id"]: r for r in results}
    assert sorted(by_id) == list(range(6))
    assert "died" in by_id[3]["crashed"] and all(by_id[i]["marker"] == "ok" for i in (0, 1, 2, 4, 5))
    assert all(by_id[i]["pid"] != os.getpid() for i in (0, 1, 2, 4, 5))
    with pytest.raises(WorkerCrashError, match="died"):  # without a crash handler the run stops, naming the task
        run_tasks(_task, [3], 1, _init, ("ok",), _close, "test", progress=False)
    in_process = run_tasks(_task, [0, 1], 0, _init, ("here",), _close, "test", progress=False)
    assert [r["pid"] for r in in_process] == [os.getpid()] * 2 and in_process[0]["marker"] == "here"


def test_slurm_array_script_passes_the_workers_and_leaves_the_shard_to_the_array(tmp_path):
    """scripts/slurm/render_templates_array.sbatch, run by bash with a stand-in `srun`: num_workers from the GPUs
    (2 per GPU) unless given, the array variables left for shard=auto, a non-array submission refused."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "slurm" / "render_templates_array.sbatch"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "srun").write_text('#!/usr/bin/env bash\necho "$@" > "$SRUN_ARGS"\n')
    (bindir / "srun").chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "SRUN_ARGS": str(tmp_path / "args"), "SLURM_SUBMIT_DIR":
           str(tmp_path), "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_GPUS_ON_NODE": "8"}

    def run(*args, **extra):
        return subprocess.run([shutil.which("bash"), str(script), *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=60)

    assert run("vpog.bop.templates", "dataset=d", "out=o").returncode == 0
    assert (tmp_path / "args").read_text().split() == ["--ntasks=1", "python", "-m", "vpog.bop.templates",
                                                       "num_workers=16", "dataset=d", "out=o"]
    assert run("vpog.data.synthesize", "out=o", "num_workers=3", VPOG_PROCS_PER_GPU="1").returncode == 0
    assert (tmp_path / "args").read_text().split()[3:] == ["vpog.data.synthesize", "out=o", "num_workers=3"]
    assert run("vpog.data.synthesize", "out=o", SLURM_GPUS_ON_NODE="0", SLURM_CPUS_PER_TASK="6").returncode == 0
    assert "num_workers=6" in (tmp_path / "args").read_text()
    bad = run("vpog.train")
    assert bad.returncode == 2 and "usage" in bad.stderr
    env.pop("SLURM_ARRAY_TASK_ID")
    alone = run("vpog.bop.templates", "dataset=d")
    assert alone.returncode == 2 and "--array" in alone.stderr
