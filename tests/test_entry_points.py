"""Every module CLI takes the same Hydra-style overrides and rejects unknown keys by name."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRY_POINTS = [
    ("vpog.train", "optim.lrr=1", "optim.lr"),
    ("vpog.evaluate", "checkpont=x", "checkpoint"),
    ("vpog.data.synthesize", "num_object=3", "num_objects"),
]


@pytest.mark.parametrize("module, bad_override, suggestion", ENTRY_POINTS)
def test_unknown_key_rejected_with_suggestion(module, bad_override, suggestion):
    out = subprocess.run([sys.executable, "-m", module, bad_override], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, (out.stdout, out.stderr)
    key = bad_override.split("=")[0]
    assert f"unknown config key '{key}'" in out.stderr
    assert suggestion in out.stderr


@pytest.mark.parametrize("module", [m for m, _, _ in ENTRY_POINTS])
def test_help_prints_config(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "config groups:" in out.stdout


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_demo.sh", "gpu_demo_bundle.sh", "install.sh"])
def test_shell_scripts_parse_and_fail_loudly(script):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -uo pipefail" in text or "set -euo pipefail" in text
