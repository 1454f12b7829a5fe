"""Run rendering tasks in N worker processes (each with its own EGL context) or in this process, with a
progress bar counting views (rate, ETA).

Shared by `vpog.data.synthesize` and `vpog.bop.templates`. Workers are spawned (not forked: an OpenGL
context must not be inherited); worker k first picks its GPU (`scale_out.select_egl_device(k)`: the
k % G-th GPU on a machine with G, nothing on a CPU), then runs `init(*initargs)` once. `workers=0` runs
the tasks here (`init`, the tasks, then `close()`).

A task that kills its process (a segmentation fault in a driver on a pathological mesh, the OOM killer)
does not stop the run: the tasks that were in flight are run again one at a time in a fresh worker, and
the one that kills that worker too is reported through `crashed(task, reason)` like a skipped task.
Any exception a task raises stops the run (tasks report expected failures in their results).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_CRASHES = 3  # isolated tasks in a row that kill their worker: the fault is not theirs


class WorkerCrashError(RuntimeError):
    """Render worker processes keep dying on tasks run alone: a broken driver or setup, not a bad object."""


def _worker_init(counter, init: Callable, initargs: tuple, close: Callable) -> None:
    from multiprocessing.util import Finalize

    from .scale_out import select_egl_device

    with counter.get_lock():
        index = counter.value
        counter.value += 1
    select_egl_device(index)
    init(*initargs)
    Finalize(None, close, exitpriority=10)


class _Progress:
    """tqdm bar over task weights (views, images): rate and ETA in those units; or nothing."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=f" {unit}", smoothing=0.05, dynamic_ncols=True)

    def update(self, n: int, skipped: int) -> None:
        if self.bar is not None:
            if skipped:
                self.bar.set_postfix_str(f"skipped {skipped}", refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tasks(run: Callable, tasks: Sequence, workers: int, init: Callable, initargs: tuple, close: Callable,
              desc: str, unit: str = "views", progress: bool = True, weight: Callable | None = None,
              crashed: Callable | None = None, is_skipped: Callable | None = None) -> list:
    """`run(task)` for every task -> results in completion order (task order with `workers=0`).

    run, init and close must be module-level functions (picklable). `weight(task)` is the task's share of
    the progress bar (default 1); `crashed(task, reason)` makes the result of a task whose process died
    twice (default: raise WorkerCrashError); `is_skipped(result)` counts results shown as skipped.
    """
    results: list = []
    if not tasks:
        return results
    weight = weight or (lambda task: 1)
    bar = _Progress(sum(weight(t) for t in tasks), desc, unit, progress)
    skipped = 0

    def record(task, result) -> None:
        nonlocal skipped
        results.append(result)
        skipped += bool(is_skipped and is_skipped(result))
        bar.update(weight(task), skipped)

    try:
        if workers < 1:
            init(*initargs)
            try:
                for task in tasks:
                    record(task, run(task))
            finally:
                close()
        else:
            _run_in_processes(run, list(tasks), workers, init, initargs, close, record, crashed)
    finally:
        bar.close()
    return results


def _executor(workers: int, init: Callable, initargs: tuple, close: Callable) -> ProcessPoolExecutor:
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(counter, init, initargs, close))


def _shutdown(executor: ProcessPoolExecutor, kill: bool) -> None:
    if kill:  # interrupted: do not wait for tasks in flight (their output is written atomically)
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.terminate()
    executor.shutdown(wait=not kill, cancel_futures=True)


def _run_in_processes(run, tasks, workers, init, initargs, close, record, crashed) -> None:
    pending = deque(tasks)
    executor = _executor(workers, init, initargs, close)
    ok = False
    try:
        while pending:
            inflight = {}
            suspects = []
            while pending or inflight:
                while pending and len(inflight) < 2 * workers:
                    task = pending.popleft()
                    inflight[executor.submit(run, task)] = task
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                broken = False
                for future in done:
                    task = inflight.pop(future)
                    try:
                        record(task, future.result())
                    except BrokenProcessPool:
                        suspects.append(task)
                        broken = True
                if broken:
                    suspects.extend(inflight.values())  # every task in flight failed with the pool
                    break
            if suspects:
                logger.warning("a render worker process died with %d tasks in flight; running them again one "
                               "at a time to find the one that kills it", len(suspects))
                _shutdown(executor, kill=True)
                _isolate(run, suspects, init, initargs, close, record, crashed)
                if pending:
                    executor = _executor(workers, init, initargs, close)
        ok = True
    finally:
        _shutdown(executor, kill=not ok)


def _isolate(run, suspects, init, initargs, close, record, crashed) -> None:
    """Run each suspect task alone in one worker; a task whose worker dies again is reported as crashed."""
    executor = _executor(1, init, initargs, close)
    consecutive = 0
    try:
        for task in suspects:
            try:
                result = executor.submit(run, task).result()
                consecutive = 0
            except BrokenProcessPool as exc:
                consecutive += 1
                _shutdown(executor, kill=True)
                if consecutive >= MAX_CONSECUTIVE_CRASHES:
                    raise WorkerCrashError(f"{consecutive} tasks in a row killed the render worker running each "
                                           f"alone (last: {task!r}); the fault is in the setup (driver, memory, "
                                           f"the worker's initialisation: see the log above), not in one "
                                           f"object") from exc
                executor = _executor(1, init, initargs, close)
                reason = f"its render process died ({exc})"
                logger.error("task %r: %s, twice; skipped", task, reason)
                if crashed is None:
                    raise WorkerCrashError(f"task {task!r}: {reason}") from exc
                result = crashed(task, reason)
            record(task, result)
    finally:
        _shutdown(executor, kill=False)
