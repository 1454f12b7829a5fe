"""`python -m vpog.train [key=value ...]`: train VPOG (one process), or under `torchrun` on several.

    python -m vpog.train                                      # tiny model, built-in synthetic set, CPU ok
    torchrun --nproc-per-node=8 -m vpog.train preset=full     # ViT-B on 8 GPUs, full schedule
    sbatch scripts/slurm/train_multi_node.sbatch             # several nodes, requeued before the time limit
    python -m vpog.train --help                               # config groups and the composed config

A run lives in `<output_dir>/<run_name>/` (config.yaml, checkpoints/, metrics.jsonl, tensorboard/);
starting the same command again resumes from its newest valid checkpoint. Exit codes: 0 finished or
stopped by a signal (checkpoint saved), 1 an error, 2 a bad command line, 130 a second
Ctrl-C. The shutdown order is written down in `vpog/training/trainer.py`.

References: pytorch/torchtitan `torchtitan/train.py` (a thin entry point: logging, config, trainer,
train, close in a finally).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger("vpog.train")

DESCRIPTION = (
    "Train VPOG. Overrides are key=value (e.g. optim.lr=3e-4) or group=option (machine=slurm, "
    "model=vpog_vitb, data=synthetic). With no data configured it trains on the built-in synthetic "
    "set, created under data_cache/ on first use."
)


def main(argv: Sequence[str] | None = None) -> int:
    from vpog.cli import parse_cli
    from vpog.training.logger import init_logger

    init_logger()
    cfg = parse_cli("train", argv, description=DESCRIPTION)

    from vpog.training.trainer import Trainer

    trainer, code = None, 1
    try:
        trainer = Trainer(cfg)
        code = trainer.train()
    except KeyboardInterrupt:
        log.warning("interrupted (second Ctrl-C): exiting without a final checkpoint")
        code = 130
    except Exception:
        log.exception("training failed")
        code = 1
    finally:
        if trainer is not None:
            trainer.close(abort=code != 0)
    return code


def exit_process(code: int) -> None:
    """End the process with `code`; a failed run, or one with a process-group thread still alive, ends
    at once (logs flushed, no interpreter finalisation; see the shutdown order in trainer.py)."""
    from vpog.training.distributed import process_group_threads

    if code == 0 and not process_group_threads():
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's teardown SIGTERM: this rank is leaving anyway
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
