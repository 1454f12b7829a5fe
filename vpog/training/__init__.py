"""Distributed training of VPOG: `torchrun --nproc-per-node=N -m vpog.train` or `python -m vpog.train`.

- `trainer`: the Trainer (build, resume, the training loop, validation, close) and its configs;
- `task`: the interface between the trainer and a model + data;
- `step`: VPOG's task (batch -> flow labels -> model -> cls + flow + EPro-PnP losses; validation; images);
- `distributed`: process-group setup from torchrun's or SLURM's variables, collectives;
- `checkpoint`: atomic, checksummed checkpoints, keep-last-k, newest-valid resume;
- `signals`: SIGTERM/SIGUSR1/SIGINT stop agreed across ranks, SLURM requeue;
- `sampler`: the resumable distributed stream sampler and per-sample seeding;
- `optim`: AdamW parameter groups and the warm-up + cosine schedule;
- `logger`: progress bar, TensorBoard, metrics.jsonl;
- `rng`: capture / restore of every random stream (exact resume).

Importing this package does not import the model or the data code.
"""
