"""`python -m vpog.info` reports versions and a backend for every op."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from vpog.info import collect, format_report


def test_collect_reports_every_registered_op():
    info = collect()
    assert info["torch"] == torch.__version__
    assert "s2rope_attention" in info["ops"]
    assert info["op_import_errors"] == []
    for per_device in info["ops"].values():
        assert "cpu" in per_device
        assert per_device["cpu"]["backends"]["reference"] == "available"
        assert per_device["cpu"]["auto"] in per_device["cpu"]["backends"]
    text = format_report(info)
    assert "s2rope_attention [cpu]: auto ->" in text


def test_module_runs_as_script():
    out = subprocess.run([sys.executable, "-m", "vpog.info", "--json"], capture_output=True, text=True,
                         check=True, timeout=300)
    info = json.loads(out.stdout)
    assert info["torch"] == torch.__version__
    assert info["cuda_available"] == torch.cuda.is_available()
