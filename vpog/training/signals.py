"""Graceful stop on SIGTERM, SIGUSR1 and SIGINT, agreed by all ranks at a step boundary; SLURM requeue.

A handler only records that a signal arrived. The trainer folds the local request into the small
`all_reduce(MAX)` it already does after every optimiser step (together with the non-finite flags), so
all ranks see the same answer after the same step, save one checkpoint and exit 0, even when only one
rank received the signal.

Request codes (a larger code wins in the MAX): 0 none, 1 SIGINT (Ctrl-C), 2 SIGTERM (preemption,
`scancel`, torchrun shutting down), 3 SIGUSR1 (SLURM's pre-timeout warning, `#SBATCH --signal=USR1@180`).
Only a SIGUSR1 stop requeues the SLURM job (`scontrol requeue $SLURM_JOB_ID`, rank 0, after the
checkpoint is on disk); a SIGTERM from `scancel` must not bring the job back.

A second Ctrl-C raises KeyboardInterrupt at once (the first one asked politely).

Under `torchrun` the signal must reach the workers: torchrun forwards SIGTERM and SIGINT by itself,
SIGUSR1 only when `TORCHELASTIC_SIGNALS_TO_HANDLE` lists it (torch >= 2.9; the SLURM scripts set it).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from types import FrameType

log = logging.getLogger(__name__)

NONE, SIGINT_STOP, SIGTERM_STOP, SIGUSR1_STOP = 0, 1, 2, 3
_CODES = {signal.SIGINT: SIGINT_STOP, signal.SIGTERM: SIGTERM_STOP, signal.SIGUSR1: SIGUSR1_STOP}
CODE_NAMES = {NONE: "none", SIGINT_STOP: "SIGINT", SIGTERM_STOP: "SIGTERM", SIGUSR1_STOP: "SIGUSR1"}


class StopRequest:
    """Records SIGTERM / SIGUSR1 / SIGINT instead of dying; `code` is the strongest request so far."""

    def __init__(self) -> None:
        self.code = NONE
        self._previous: dict[int, object] = {}

    def install(self) -> StopRequest:
        """Install the handlers (main thread only); the previous ones are restored by `uninstall`."""
        for sig in _CODES:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        code = _CODES.get(signum, SIGTERM_STOP)
        if code == SIGINT_STOP and self.code != NONE:
            raise KeyboardInterrupt
        self.code = max(self.code, code)
        # logging from a signal handler can deadlock on the handler's lock: write to stderr directly
        try:
            os.write(2, f"vpog.train: received {signal.Signals(signum).name}, stopping at the next step "
                        f"boundary (checkpoint, then exit)\n".encode())
        except OSError:
            pass

    def request(self, code: int) -> None:
        """Ask for a stop without a signal (tests, hooks)."""
        self.code = max(self.code, int(code))


def ignore_stop_signals() -> None:
    """For DataLoader workers: leave SIGTERM/SIGUSR1/SIGINT to the training process that owns them."""
    for sig in _CODES:
        signal.signal(sig, signal.SIG_IGN)


def requeue_slurm_job(environ: dict[str, str] | None = None) -> bool:
    """`scontrol requeue $SLURM_JOB_ID`; True when it succeeded. Needs `--requeue` on the job."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID") and \
        f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    job = job or env.get("SLURM_JOB_ID")
    if not job:
        log.warning("requeue asked for, but SLURM_JOB_ID is not set: not on SLURM, nothing to requeue")
        return False
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        log.warning("requeue asked for, but scontrol is not on PATH")
        return False
    res = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job, res.returncode, res.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job)
    return True
