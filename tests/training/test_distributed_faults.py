"""Fault tolerance with 2 CPU ranks (gloo) under real `torchrun`, driven by the toy task (trainer_toy.py).

Four launches, run once per module, then checked by the tests:

- ref:   10 steps uninterrupted; rank 1 alone gets a NaN loss at step 4.
- sig:   the same run, slowed down; SIGUSR1 is sent to rank 1 only, mid-run. On SLURM (faked: SLURM_JOB_ID
         and a stand-in `scontrol` on PATH) rank 0 requeues the job.
- sig (resumed): the newest checkpoint of `sig` is corrupted first, then the same command runs again.
- crash: rank 0 dies (os._exit) at step 7 in the first attempt; `torchrun --max-restarts=1` restarts
         both ranks, which resume from the step-6 checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("hydra", reason="the training CLI composes its config with hydra-core")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainer_toy import read_trace  # noqa: E402

from vpog.training.checkpoint import list_checkpoints  # noqa: E402
from vpog.training.logger import read_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 10
NUM_SAMPLES = 20
BATCH = 3  # per rank: 6 stream positions per step, so epochs (20) end mid-step


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "training"), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    env.update(extra or {})
    return env


def _overrides(out: Path, run: str, tag: str, *extra: str) -> list[str]:
    return [
        "task=trainer_toy:ToyTask", f"output_dir={out}", f"run_name={run}", "machine.device=cpu",
        "machine.num_workers=1", f"optim.max_steps={MAX_STEPS}", "optim.warmup_steps=2", "checkpoint.every_steps=3",
        "checkpoint.keep_last=2", "log.every_steps=2", "log.val_every_steps=5", "log.image_every_steps=5",
        "log.tensorboard=false", "faults.process_group_timeout_s=60", "+toy.nan_at_step=4", "+toy.nan_rank=1",
        f"+toy.num_samples={NUM_SAMPLES}", f"+toy.batch_size={BATCH}", f"+toy.tag={tag}", *extra,
    ]


def _torchrun(out: Path, run: str, tag: str, *extra: str, max_restarts: int = 0, env: dict | None = None,
              log_name: str | None = None) -> tuple[subprocess.Popen, Path]:
    log_path = out / f"{log_name or tag}.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           f"--max-restarts={max_restarts}", "-m", "vpog.train", *_overrides(out, run, tag, *extra)]
    f = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(env), stdout=f, stderr=subprocess.STDOUT)
    f.close()
    return proc, log_path


def _wait(proc: subprocess.Popen, log_path: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"launch timed out; log:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    fake_bin = out / "bin"
    fake_bin.mkdir()
    scontrol = fake_bin / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {out / 'scontrol_calls'}\n")
    scontrol.chmod(0o755)
    slurm_env = {"SLURM_JOB_ID": "4242", "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}

    # the signal run first (it waits for a signal), the reference and crash runs meanwhile
    sig, sig_log = _torchrun(out, "sig", "b1", "+toy.sleep_s=0.4", "machine.requeue_on_signal=true",
                             env=slurm_env)
    ref, ref_log = _torchrun(out, "ref", "ref")
    crash, crash_log = _torchrun(out, "crash", "c", "+toy.crash_at_step=7", max_restarts=1)

    deadline = time.time() + 240
    sent_at = None
    while time.time() < deadline and sig.poll() is None:
        trace = read_trace(out / "sig", "b1", 1)
        if trace and trace[-1]["step"] >= 5:
            os.kill(trace[-1]["pid"], signal.SIGUSR1)
            sent_at = trace[-1]["step"]
            break
        time.sleep(0.05)
    results = {"out": out, "sent_at": sent_at}
    results["sig_rc"] = _wait(sig, sig_log)
    results["sig_log"] = sig_log.read_text()

    # corrupt the newest checkpoint of the stopped run, then run the same command again
    ckpts = list_checkpoints(out / "sig" / "checkpoints")
    results["sig_ckpts"] = [s for s, _ in ckpts]
    newest = ckpts[0][1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    resumed, resumed_log = _torchrun(out, "sig", "b2", log_name="b2")
    results["resumed_rc"] = _wait(resumed, resumed_log)
    results["resumed_log"] = resumed_log.read_text()
    results["ref_rc"] = _wait(ref, ref_log)
    results["ref_log"] = ref_log.read_text()
    results["crash_rc"] = _wait(crash, crash_log)
    results["crash_log"] = crash_log.read_text()
    return results


def _by_step(trace: list[dict]) -> dict[int, dict]:
    """The last record of each step (a resumed run repeats steps after its checkpoint)."""
    return {r["step"]: r for r in trace}


def _check_rc(runs, name):
    assert runs[f"{name}_rc"] == 0, runs[f"{name}_log"][-4000:]


def test_reference_run_and_checkpoint_rotation(runs):
    _check_rc(runs, "ref")
    ckpts = [s for s, _ in list_checkpoints(runs["out"] / "ref" / "checkpoints")]
    assert ckpts == [10, 9]  # keep_last = 2 of 3, 6, 9, 10
    train = read_metrics(runs["out"] / "ref" / "metrics.jsonl", "train")
    assert [r["step"] for r in train] == [2, 4, 6, 8, 10]
    assert train[-1]["skipped_steps"] == 1
    assert train[-1]["skipped_samples"] == 2  # the toy task reports one per rank at step 0
    assert {"loss", "lr", "lr_backbone", "grad_norm", "images_per_s", "data_time_s", "peak_memory_gib",
            "loss_mse"} <= set(train[-1])
    assert train[-1]["lr_backbone"] == pytest.approx(0.1 * train[-1]["lr"])
    val = read_metrics(runs["out"] / "ref" / "metrics.jsonl", "val")
    assert [r["step"] for r in val] == [5, 10]


def test_nan_on_one_rank_is_skipped_on_both(runs):
    _check_rc(runs, "ref")
    t0, t1 = (_by_step(read_trace(runs["out"] / "ref", "ref", r)) for r in (0, 1))
    assert t1[4]["loss"] != t1[4]["loss"]  # NaN on rank 1
    assert t0[4]["loss"] == t0[4]["loss"]  # finite on rank 0
    for t in (t0, t1):
        assert t[5]["params"] == t[4]["params"]  # no update from step 4 on either rank
        assert t[4]["params"] != t[3]["params"] and t[6]["params"] != t[5]["params"]
    for step in range(MAX_STEPS):
        assert t0[step]["params"] == t1[step]["params"]  # the ranks never diverge
    events = [e for e in read_metrics(runs["out"] / "ref" / "metrics.jsonl", "event") if e["event"] == "skipped_step"]
    assert [e["step"] for e in events] == [4]
    assert runs["ref_log"].count("skipped on every rank") == 2  # one warning per rank


def test_every_sample_seen_once_per_epoch_across_ranks(runs):
    t0, t1 = (_by_step(read_trace(runs["out"] / "ref", "ref", r)) for r in (0, 1))
    stream = []
    for step in range(MAX_STEPS):
        assert len(t0[step]["indices"]) == len(t1[step]["indices"]) == BATCH
        stream += t0[step]["indices"] + t1[step]["indices"]
    assert len(stream) == 3 * NUM_SAMPLES
    for e in range(3):
        assert sorted(stream[e * NUM_SAMPLES:(e + 1) * NUM_SAMPLES]) == list(range(NUM_SAMPLES))


def test_sigusr1_to_one_rank_checkpoints_and_exits_zero(runs):
    assert runs["sent_at"] is not None, "the signal run finished before the signal could be sent"
    _check_rc(runs, "sig")
    t0, t1 = (read_trace(runs["out"] / "sig", "b1", r) for r in (0, 1))
    last0, last1 = t0[-1]["step"], t1[-1]["step"]
    assert last0 == last1  # both ranks stopped after the same step
    stop_step = last0 + 1
    assert runs["sent_at"] <= last0 < MAX_STEPS - 1
    assert runs["sig_ckpts"][0] == stop_step
    events = read_metrics(runs["out"] / "sig" / "metrics.jsonl", "event")
    stops = [e for e in events if e["event"] == "stop"]
    assert stops and stops[0]["step"] == stop_step and stops[0]["signal"] == "SIGUSR1"
    assert (runs["out"] / "scontrol_calls").read_text().split() == ["requeue", "4242"]  # rank 0 only, once


def test_resume_after_corrupt_newest_matches_uninterrupted(runs):
    _check_rc(runs, "resumed")
    _check_rc(runs, "ref")
    log = runs["resumed_log"]
    assert "skipping checkpoint" in log and "falling back" in log
    previous = runs["sig_ckpts"][1]
    events = read_metrics(runs["out"] / "sig" / "metrics.jsonl", "event")
    resume = [e for e in events if e["event"] == "resume"][-1]
    assert resume["step"] == previous and resume["checkpoint"].endswith(f"ckpt_{previous:09d}.pt")
    assert previous < runs["sig_ckpts"][0]  # it really did fall back
    for rank in (0, 1):
        ref = _by_step(read_trace(runs["out"] / "ref", "ref", rank))
        resumed = read_trace(runs["out"] / "sig", "b2", rank)
        assert [r["step"] for r in resumed] == list(range(previous, MAX_STEPS))
        for r in resumed:
            want = ref[r["step"]]
            assert r["indices"] == want["indices"]
            assert r["params"] == want["params"]
            assert r["loss"] == want["loss"] or (r["loss"] != r["loss"] and want["loss"] != want["loss"])


def test_max_restarts_resumes_after_a_crash(runs):
    _check_rc(runs, "crash")
    for rank in (0, 1):
        ref = _by_step(read_trace(runs["out"] / "ref", "ref", rank))
        trace = read_trace(runs["out"] / "crash", "c", rank)
        steps = [r["step"] for r in trace]
        assert steps.count(6) == 2 and steps[-1] == MAX_STEPS - 1  # step 6 ran before and after the restart
        assert len({r["pid"] for r in trace}) == 2  # two attempts, two processes
        for step, r in _by_step(trace).items():
            assert r["params"] == ref[step]["params"] and r["indices"] == ref[step]["indices"]
    events = read_metrics(runs["out"] / "crash" / "metrics.jsonl", "event")
    assert [e["step"] for e in events if e["event"] == "resume"] == [6]


def test_metrics_file_is_json_lines(runs):
    for line in (runs["out"] / "ref" / "metrics.jsonl").read_text().splitlines():
        json.loads(line)


@pytest.mark.parametrize("log", ["ref_log", "sig_log", "resumed_log", "crash_log"])
def test_every_rank_left_its_process_group(runs, log):
    """Finished, signal-stopped, resumed and restarted runs: no gloo thread outlived `Trainer.close()`."""
    assert "process-group threads still alive" not in runs[log]
    assert "terminate called" not in runs[log]
