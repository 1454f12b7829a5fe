"""pytest setup shared by tests/ and benchmarks/.

- Without CUDA, Triton kernels run through the interpreter: TRITON_INTERPRET=1 is set here, before
  anything imports triton.
- `@pytest.mark.cuda` cases skip cleanly without a GPU.
"""

from __future__ import annotations

import os

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
