"""One rank of the process-group shutdown test (run by test_shutdown.py under torchrun, 2 CPU ranks).

Writes `{"rank", "threads_alive", "threads_after", "clean", "group_in_defaults"}` to `OUT_DIR/rank{rank}.json`
(one file per rank: two ranks printing to one shared stdout can interleave their lines):
process-group threads seen while the group is alive (the detector works), after vpog's teardown (none
may be left), and whether `torch.distributed.nn.functional` kept the group in its default arguments. Arguments:
"destroy" (a finished run) or "abort" (the error path), then OUT_DIR.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.distributed import ProcessGroup
from torch.nn.parallel import DistributedDataParallel

from vpog.training import distributed as D


def main(mode: str, out_dir: Path) -> None:
    ctx = D.init_distributed(D.MachineConfig(device="cpu", dist_backend="gloo", precision="fp32"), 60.0)
    import torch.distributed.nn.functional as F  # what DDP's first construction imports

    captured = F.all_reduce.__defaults__  # holds the group if the module was first imported after init
    model = DistributedDataParallel(torch.nn.Linear(16, 16))  # its first construction imports torch._dynamo
    for _ in range(3):
        model(torch.randn(4, 16)).sum().backward()
    gathered = D.all_gather_object({"rank": ctx.rank, "payload": torch.randn(64)})
    D.barrier()
    alive = D.process_group_threads()  # after the collectives, so every worker thread has named itself
    del model, gathered
    clean = D.destroy_distributed(abort=mode == "abort", timeout_s=30.0)
    report = {"rank": ctx.rank, "threads_alive": alive, "threads_after": D.process_group_threads(),
              "clean": clean, "group_in_defaults": any(isinstance(d, ProcessGroup) for d in captured)}
    (out_dir / f"rank{ctx.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
