"""Shared setup of the tests (the repository's conftest.py sets TRITON_INTERPRET and skips `cuda` cases).

- Every test starts from fixed RNG seeds so a failure reproduces.
- `require_egl` skips, with the reason, where headless EGL rendering (pyrender) is unavailable.
"""

from __future__ import annotations

import random

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    torch.manual_seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:
        pass
    yield


@pytest.fixture
def device() -> torch.device:
    """The best device of this machine (CUDA when present)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _egl_skip_reason() -> str | None:
    try:
        from vpog.data.render import egl_available
    except Exception as exc:  # pyrender/trimesh not installed
        return f"rendering stack unavailable: {exc}"
    ok, reason = egl_available()
    return None if ok else reason


@pytest.fixture(scope="session")
def require_egl():
    """Skip (with the reason) where headless EGL rendering is unavailable."""
    reason = _egl_skip_reason()
    if reason:
        pytest.skip(reason)
