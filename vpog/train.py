"""`python -m vpog.train [key=value ...]`: train VPOG (one process), or several ranks under `torchrun`.

    python -m vpog.train                                      # tiny model, built-in synthetic set, CPU ok
    python -m vpog.train machine.num_gpus=4                   # 4 ranks on this machine (torchrun's launcher)
    torchrun --nproc-per-node=8 -m vpog.train preset=full     # ViT-B on 8 GPUs, full schedule
    sbatch scripts/slurm/train_multi_node.sbatch              # several nodes, requeued before the time limit
    python -m vpog.check preset=full                          # the pre-flight check before a long run
    python -m vpog.train --help                               # config groups and the composed config

A run lives in `<output_dir>/<run_name>/` (config.yaml, checkpoints/, metrics.jsonl, tensorboard/);
starting the same command again resumes from its newest valid checkpoint. `machine.num_gpus=N` (or
`auto`) starts N ranks through `torch.distributed.run`, as `torchrun --nproc-per-node=N` would; under
torchrun or srun the key is ignored (see `vpog/launch.py`). Before anything is built, the machine
settings are checked against the job and the CroCo weights `model.encoder.checkpoint` names must exist.
Exit codes: 0 finished or stopped by a signal (checkpoint saved), 1 an error (with machine.num_gpus:
torchrun's code, so 1 also when the launcher itself was signalled, though the ranks saved a checkpoint),
2 a bad command line, bad machine settings or missing CroCo weights, 130 a second Ctrl-C.
The shutdown order is written down in `vpog/training/trainer.py`.

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
    "model=vpog_vitb, data=synthetic). The default preset=demo trains the tiny model on the built-in "
    "synthetic set, created under data_cache/ on first use; preset=full (machine=slurm selects it) trains "
    "ViT-B from the CroCo v2 weights on data=gso_shapenet. machine.num_gpus=N starts N ranks here."
)


def main(argv: Sequence[str] | None = None) -> int:
    from vpog.cli import parse_cli
    from vpog.training.logger import init_logger

    init_logger()
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_cli("train", argv, description=DESCRIPTION)

    from vpog.config_schema import from_mapping
    from vpog.launch import launch_local, plan
    from vpog.model.croco_checkpoint import croco_checkpoint_problem
    from vpog.training.distributed import MachineConfig, read_dist_env
    from vpog.training.task import TASKS

    is_main = True
    try:
        is_main = read_dist_env().rank == 0
        launch = plan(from_mapping(MachineConfig, cfg.get("machine"), "machine"), overrides=argv)
    except ValueError as exc:  # LaunchError and bad machine values: one line, the same on every rank
        if is_main:
            log.error("%s", exc)
        return 2
    if launch.note and is_main:
        log.info("%s", launch.note)
    uses_vpog = TASKS.get(str(cfg.get("task", "vpog")), str(cfg.get("task"))) == TASKS["vpog"]
    problem = croco_checkpoint_problem(cfg.get("model")) if uses_vpog else None  # other tasks build no VPOG
    if problem:
        if is_main:
            log.error("%s", problem)
        return 2
    if launch.processes > 1:
        return launch_local(launch.processes, argv)

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
