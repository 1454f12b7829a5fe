"""Fixtures of the model tests (helpers live in model_helpers.py)."""

from __future__ import annotations

import pytest
from model_helpers import make_batch


@pytest.fixture
def batch():
    return make_batch()
