"""The built wheel ships `vpog.kernels` and the configs, and installs no top-level `kernels` module."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_layout(tmp_path):
    pytest.importorskip("setuptools", reason="building a wheel without isolation needs setuptools installed")
    env = dict(os.environ, VPOG_BUILD_EXT="0")  # layout only: skip compiling the extension
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        check=True, env=env, timeout=600, capture_output=True,
    )
    wheels = list(tmp_path.glob("vpog-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"vpog"}, f"unexpected top-level entries: {sorted(top_level)}"
    assert "vpog/kernels/__init__.py" in names
    for path in ("vpog/config/train.yaml", "vpog/config/machine/local.yaml", "vpog/config/machine/slurm.yaml"):
        assert path in names
    expected_kernels = {f"vpog/kernels/{p.name}" for p in (ROOT / "kernels").glob("*.py")}
    assert expected_kernels <= set(names)


def test_import_without_extension_or_triton_falls_back():
    """Importing vpog and its ops works without vpog._C and without triton; auto picks the reference."""
    code = (
        "import sys; sys.modules['vpog._C'] = None; sys.modules['triton'] = None\n"  # both imports now fail
        "import torch, vpog, vpog.ops, vpog.info\n"
        "from vpog._backend import OPS, extension_status, triton_status\n"
        "assert not extension_status()[0] and not triton_status()[0]\n"
        "vpog.info._load_ops()\n"
        "assert all(s.auto_choice(torch.device('cpu')) == 'reference' for s in OPS.values())\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
