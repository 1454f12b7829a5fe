"""Stress the end of 2-rank CPU training runs: launch many under CPU load, count every bad exit.

    python scripts/stress_shutdown.py                       # 100 finished runs, 2 at once, 2 busy loops
    python scripts/stress_shutdown.py --mode sigusr1 -n 50  # stop by SIGUSR1 to rank 1 mid-run
    python scripts/stress_shutdown.py --mode sigterm -n 50  # stop by SIGTERM to rank 1 mid-run
    python scripts/stress_shutdown.py --mode nan -n 50      # abort on non-finite losses (exit 1)
    python scripts/stress_shutdown.py --launcher slurm      # through scripts/slurm/train_single_node.sbatch

Each launch is `torchrun --standalone --nproc-per-node=2 -m vpog.train` with the toy task of
`tests/training/trainer_toy.py` (gloo, 4 steps, checkpoints; the same run as
tests/training/test_slurm_scripts.py), or with `--launcher slurm` the single-node sbatch script under
the simulated SLURM of that test. Expected per mode: `finish`, `sigusr1`, `sigterm` exit 0 with a
checkpoint at the last step on disk; `nan` exits 1 on every rank with the non-finite abort logged by
both ranks and no checkpoint of the aborted step. Anything else counts as a failure: another exit code,
a rank killed by a signal (SIGABRT from `terminate called ...` above all), a missing checkpoint or log
line, a time-out. Logs of failed launches are kept in --keep DIR.

Not run by CI (minutes of wall time); its counts go into the closing notes of the shutdown work.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "training"))

MODES = ("finish", "sigusr1", "sigterm", "nan")
ABORT_MARKERS = ("terminate called", "SIGABRT", "Signal 6", "exitcode  : -6", "core dumped",
                 "process-group threads still alive")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(out: Path, mode: str) -> list[str]:
    steps = 400 if mode in ("sigusr1", "sigterm") else 4
    extra = {"sigusr1": ["+toy.sleep_s=0.05"], "sigterm": ["+toy.sleep_s=0.05"],
             "nan": ["+toy.nan_at_step=2", "+toy.nan_rank=1", "faults.max_consecutive_skipped_steps=1"],
             "finish": []}[mode]
    return ["task=trainer_toy:ToyTask", f"output_dir={out}", "run_name=run", "machine.device=cpu",
            "machine.dist_backend=gloo", "machine.precision=fp32", "machine.num_workers=0",
            f"optim.max_steps={steps}", "optim.warmup_steps=1", "checkpoint.every_steps=2", "log.every_steps=2",
            "log.val_every_steps=0", "log.image_every_steps=0", "log.tensorboard=false",
            "faults.process_group_timeout_s=60", "+toy.tag=stress", *extra]


def command(launcher: str, out: Path, mode: str) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(REPO / "tests" / "training"), str(REPO), env.get("PYTHONPATH", "")]))
    ov = overrides(out, mode)
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                "--max-restarts=0", "-m", "vpog.train", *ov], env
    from test_slurm_scripts import FAKE_SCONTROL, FAKE_SRUN

    bin_dir = out / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env.update(PATH=f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               SIM_LOG=str(out / "sim.log"), SLURM_JOB_ID="777", SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1",
               SLURM_GPUS_ON_NODE="2", SLURM_JOB_NODELIST="sim1", SLURM_SUBMIT_DIR=str(REPO),
               VPOG_RDZV_PORT=str(_free_port()), VPOG_MAX_RESTARTS="0")
    ov = [o for o in ov if not o.startswith("run_name=")]  # the script names the run slurm-777
    return ["bash", str(REPO / "scripts" / "slurm" / "train_single_node.sbatch"), *ov], env


def _rank_pid(run: Path, rank: int) -> int | None:
    path = run / f"trace_stress_rank{rank}.jsonl"
    if not path.exists():
        return None
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return lines[-1]["pid"] if len(lines) >= 3 else None  # a few steps done: the handlers are installed


def launch(i: int, args) -> tuple[bool, str, str]:
    """One launch -> (ok, one-line verdict, full log)."""
    out = Path(tempfile.mkdtemp(prefix=f"stress{i}_", dir=args.workdir))
    cmd, env = command(args.launcher, out, args.mode)
    run = out / ("slurm-777" if args.launcher == "slurm" else "run")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    sent = None
    if args.mode in ("sigusr1", "sigterm"):
        deadline = time.time() + args.timeout
        while proc.poll() is None and time.time() < deadline:
            pid = _rank_pid(run, 1)
            if pid is not None:
                os.kill(pid, signal.SIGUSR1 if args.mode == "sigusr1" else signal.SIGTERM)
                sent = pid
                break
            time.sleep(0.1)
    try:
        log, _ = proc.communicate(timeout=max(1.0, args.timeout - (time.perf_counter() - t0)))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        return False, f"#{i}: timed out after {args.timeout} s", log
    rc = proc.returncode
    problems = [m for m in ABORT_MARKERS if m in log]
    from vpog.training.checkpoint import list_checkpoints

    ckpts = [s for s, _ in list_checkpoints(run / "checkpoints")] if (run / "checkpoints").is_dir() else []
    if args.mode == "nan":
        if rc != 1:
            problems.append(f"exit code {rc}, expected 1")
        aborted = len(re.findall(r"optimiser steps in a row had a non-finite loss", log))
        if aborted < 2:
            problems.append(f"the non-finite abort was logged by {aborted} rank(s), expected 2")
        if any(s > 2 for s in ckpts):
            problems.append(f"checkpoints past the aborted step: {ckpts}")
        codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", log)]
        if any(c != 1 for c in codes):
            problems.append(f"rank exit codes {codes}, expected 1 on every rank")
    else:
        if rc != 0:
            problems.append(f"exit code {rc}, expected 0")
        if args.mode == "finish" and (not ckpts or ckpts[0] != 4):
            problems.append(f"newest checkpoint {ckpts[:1]}, expected step 4")
        if args.mode != "finish":
            if sent is None:
                problems.append("the run ended before the signal could be sent")
            name = args.mode.upper()
            if f"stopped by {name}" not in log:
                problems.append(f"no 'stopped by {name}' line")
            if not ckpts:
                problems.append("no checkpoint after the stop")
    verdict = f"#{i}: rc {rc}, {time.perf_counter() - t0:.1f} s" + (f": {'; '.join(problems)}" if problems else "")
    shutil.rmtree(out, ignore_errors=True)
    return not problems, verdict, log


def _busy(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10000))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=MODES, default="finish")
    p.add_argument("-n", "--launches", type=int, default=100)
    p.add_argument("--parallel", type=int, default=2, help="launches running at once")
    p.add_argument("--load", type=int, default=2, help="busy-loop processes running alongside")
    p.add_argument("--launcher", choices=("torchrun", "slurm"), default="torchrun")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per launch")
    p.add_argument("--keep", type=Path, default=Path("stress_logs"), help="logs of failed launches go here")
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: the system temp dir)")
    args = p.parse_args(argv)

    from tqdm import tqdm

    stop = mp.Event()
    load = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    failures: list[str] = []
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(args.parallel) as pool, tqdm(total=args.launches, unit="launch",
                                                              desc=f"{args.mode} x{args.launches}") as bar:
            futures = [pool.submit(launch, i, args) for i in range(args.launches)]
            for fut in as_completed(futures):
                ok, verdict, log = fut.result()
                if not ok:
                    failures.append(verdict)
                    args.keep.mkdir(parents=True, exist_ok=True)
                    (args.keep / f"{args.mode}_{verdict.split(':')[0].lstrip('#')}.log").write_text(log)
                    bar.write(verdict)
                bar.update(1)
                bar.set_postfix(failed=len(failures))
    finally:
        stop.set()
        for proc in load:
            proc.join(timeout=5)
    print(f"{args.mode} via {args.launcher}: {args.launches - len(failures)} passed, {len(failures)} failed "
          f"({args.launches} launches, {args.parallel} at once, {args.load} busy loops, "
          f"{time.perf_counter() - t0:.0f} s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
