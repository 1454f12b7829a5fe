"""Shared pytest setup.

- Without CUDA, Triton kernels run through the interpreter: TRITON_INTERPRET=1 is set here, before
  any test imports triton.
- `@pytest.mark.cuda` tests skip cleanly without a GPU.
- Every test starts from fixed RNG seeds so a failure reproduces.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


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
