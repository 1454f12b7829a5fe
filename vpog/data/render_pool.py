"""Run rendering tasks in N processes (each with its own EGL context) or in this one, with a progress bar.

Shared by `vpog.data.synthesize` and `vpog.bop.templates`. Workers are spawned (not forked: an OpenGL
context must not be inherited) and set up once by `init(*initargs)`; in-process runs call the same
`init` and then `close()` so the renderer's context is released.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence


def run_tasks(run: Callable, tasks: Sequence, workers: int, init: Callable, initargs: tuple, close: Callable,
              desc: str, unit: str, progress: bool = True) -> list:
    """`run(task)` for every task -> results in completion order (task order with one worker).

    run and init must be module-level functions (picklable); workers > 1 starts that many processes.
    """
    results: list = []
    if not tasks:
        return results
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit=unit)
    try:
        if workers > 1:
            with mp.get_context("spawn").Pool(workers, initializer=init, initargs=initargs) as pool:
                for r in pool.imap_unordered(run, tasks):
                    results.append(r)
                    if bar is not None:
                        bar.update(1)
        else:
            init(*initargs)
            try:
                for task in tasks:
                    results.append(run(task))
                    if bar is not None:
                        bar.update(1)
            finally:
                close()
    finally:
        if bar is not None:
            bar.close()
    return results
