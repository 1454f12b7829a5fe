"""Fixtures for the data tests: one tiny synthetic set, rendered once per session (a few seconds on 2 cores)."""

from __future__ import annotations

import pytest
from synthetic_sets import tiny_set_settings


@pytest.fixture(scope="session")
def tiny_settings():
    """settings(out, **overrides) -> synthesize.yaml keys of the test set: 2 procedural objects, 9 scenes of
    128x96 in 3 shards, level-0 templates (42 views) at 160x120."""
    return tiny_set_settings


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory, require_egl):
    """Root of the tiny synthetic set (shared: copy it before damaging it)."""
    from vpog.data.synthesize import synthesize

    out = tmp_path_factory.mktemp("tiny_set")
    synthesize(tiny_set_settings(out))
    return out


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """Data code runs in single-threaded DataLoader workers; do the same here (the CI machine has 2 cores,
    and tiny torch ops with several threads on a loaded machine are slower, not faster)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
