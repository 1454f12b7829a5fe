"""`python -m vpog.data.show [training overrides] num=8 out=DIR`: the data debug pictures, without training.

    python -m vpog.data.show out=data_pictures                       # the built-in set, 8 samples
    python -m vpog.data.show preset=full data.data_root=/datasets/gigapose num=32 out=data_pictures

Takes every key of train.yaml (config `vpog/config/show.yaml` = train.yaml + `num`, `out`), builds the
training data exactly as `python -m vpog.train` with the same overrides would (the synthetic set is
created on first use; `split:`'s held-out objects are left out), reads the first `num` samples of rank
0's training stream (`data.batch_size` of them are step 0's batch), and writes one picture per sample to
`out/sample_NNNN.png`: the pictures `data.visualization` writes during training (see
`vpog/data/debug_pictures.py` for what they show). No model is built and no GPU is used. Exit code 0, or
2 with one line naming the problem (a missing data root, an unknown key, ...).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("vpog.data.show")


def _show(cfg) -> int:
    from vpog.data.debug_pictures import write_batch_pictures
    from vpog.training.sampler import PositionedDataset, StreamBatchSampler
    from vpog.training.step import VPOGTask

    num, out = cfg.num, str(cfg.out)  # a missing out= stops here, before any data is read
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be an integer >= 1, got {num!r}")
    if cfg.get("task", "vpog") != "vpog":
        raise ValueError(f"task={cfg.task}: data pictures show VPOG's data (task=vpog)")
    task = VPOGTask(cfg)
    task.prepare_data()
    train_set = task.train_dataset()
    total, order = task.epoch_order(train_set)
    seed = int(cfg.get("seed", 0))
    chunk = max(1, min(num, int(task.batch_size())))
    sampler = StreamBatchSampler(total, chunk, seed=seed, order=order)
    dataset = PositionedDataset(train_set, seed, pass_seed=task.pass_sample_seed)
    digits = max(4, len(str(num - 1)))
    written = []
    for k in range(-(-num // chunk)):
        keys = sampler.batch_at(k)[: num - k * chunk]
        batch = task.collate([dataset[key] for key in keys])
        written += write_batch_pictures(batch, out, "sample_", task.labels_cfg.tau_factor, start=k * chunk,
                                        digits=digits)
        log.info("%d of %d pictures written (%s)", len(written), num, ", ".join(batch.keys))
    log.info("wrote %d pictures to %s", len(written), out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from vpog.cli import run_command

    return run_command("show", argv, __doc__.split("\n\n")[0], _show, log)


if __name__ == "__main__":
    sys.exit(main())
