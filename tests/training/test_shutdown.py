"""Leaving the process group frees it: no gloo thread survives into interpreter finalisation.

A gloo worker thread alive at finalisation aborts the process at random (SIGABRT, `terminate called
without an active exception`) when it drops a finished collective's tensors late; see
`vpog.training.distributed._import_group_capturing_modules`. These checks are deterministic: they
look at the threads themselves, not at whether the race happened to strike. The stress script
`scripts/stress_shutdown.py` measures the exit codes over many launches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "shutdown_worker.py"

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names need Linux /proc")


def _run(mode: str, out_dir: Path) -> list[dict]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(WORKER), mode, str(out_dir)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    assert sorted(r["rank"] for r in reports) == [0, 1], proc.stdout[-3000:] + proc.stderr[-3000:]
    return reports


@pytest.mark.parametrize("mode", ["destroy", "abort"])
def test_leaving_the_group_joins_its_threads(mode, tmp_path):
    for rank in _run(mode, tmp_path):
        assert any(name.startswith("pt_gloo") for name in rank["threads_alive"]), rank  # the detector sees them
        assert rank["threads_after"] == [], rank
        assert rank["clean"] is True
        # init_distributed imported torch.distributed.nn.functional before the group existed
        assert rank["group_in_defaults"] is False, rank
