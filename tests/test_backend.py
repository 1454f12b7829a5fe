"""Backend registry: auto choice, forced backends, fallback message, process-wide default."""

from __future__ import annotations

import logging

import pytest
import torch

from vpog import _backend
from vpog._backend import register_op, select_backend, set_default_backend


@pytest.fixture
def toy_op():
    spec = register_op("toy_op_for_tests", backends=("reference", "triton", "cpu"),
                       auto={"cpu": ("cpu", "triton")}, extension_ops=("toy_op_for_tests",))
    yield spec
    _backend.OPS.pop("toy_op_for_tests", None)


def test_unknown_backend_name_rejected(toy_op):
    with pytest.raises(ValueError, match="backend must be"):
        select_backend("toy_op_for_tests", "tpu", torch.device("cpu"))


def test_forced_backend_unavailable_says_why(toy_op):
    # The extension has no kernel named toy_op_for_tests, whether or not vpog._C is built.
    with pytest.raises(RuntimeError, match="toy_op_for_tests"):
        select_backend("toy_op_for_tests", "cpu", torch.device("cpu"))


def test_auto_falls_back_to_reference_and_warns_once(toy_op, caplog, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the interpreter must not count as a fast CPU path
    _backend._warned.clear()
    with caplog.at_level(logging.WARNING, logger="vpog._backend"):
        assert select_backend("toy_op_for_tests", "auto", torch.device("cpu")) == "reference"
        assert select_backend("toy_op_for_tests", "auto", torch.device("cpu")) == "reference"
    warnings = [r for r in caplog.records if "toy_op_for_tests" in r.getMessage()]
    assert len(warnings) == 1
    assert "reference" in warnings[0].getMessage()


def test_interpreter_counts_only_when_enabled(toy_op, monkeypatch):
    ok, _ = _backend.triton_status()
    if not ok:
        pytest.skip("triton not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_backend("toy_op_for_tests", "triton", torch.device("cpu")) == "triton"
    assert toy_op.label("triton", torch.device("cpu")) == "Triton interpreter"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        select_backend("toy_op_for_tests", "triton", torch.device("cpu"))


def test_process_default_reference(toy_op, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    set_default_backend("reference")
    try:
        assert select_backend("toy_op_for_tests", "auto", torch.device("cpu")) == "reference"
    finally:
        set_default_backend("auto")
    with pytest.raises(ValueError):
        set_default_backend("fastest")


def test_cuda_backend_needs_cuda_tensors(toy_op):
    spec = register_op("toy_cuda_op", backends=("reference", "cuda"), auto={"cuda": ("cuda",)})
    try:
        reason = spec.unavailable_reason("cuda", torch.device("cpu"))
        assert reason is not None and "cuda tensors" in reason
    finally:
        _backend.OPS.pop("toy_cuda_op", None)
