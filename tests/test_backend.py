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


def test_process_default_missing_from_an_op_keeps_its_auto_choice(toy_op, monkeypatch):
    """ops.backend=cuda (or cpu, triton) must not break the ops that have no such backend."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    spec = register_op("toy_ref_only_op", backends=("reference", "triton"), auto={"cpu": ()})
    set_default_backend("cuda")
    try:
        assert select_backend("toy_ref_only_op", "auto", torch.device("cpu")) == "reference"
        with pytest.raises(RuntimeError, match="no backend 'cuda'"):  # forced explicitly: still an error
            select_backend("toy_ref_only_op", "cuda", torch.device("cpu"))
        set_default_backend("triton")  # an op that has the default's backend takes it
        assert select_backend("toy_ref_only_op", "auto", torch.device("cpu")) == "triton"
    finally:
        set_default_backend("auto")
        _backend.OPS.pop(spec.name, None)


def test_process_default_with_the_real_ops():
    from vpog.ops import s2rope_attention, s2rope_attention_reference

    q, k, v = (torch.randn(1, 2, 5, 32) for _ in range(3))
    pos = torch.rand(1, 5, 4)
    for default in ("cpu", "cuda"):
        set_default_backend(default)
        try:
            out = s2rope_attention(q, k, v, pos, (4, 4, 4, 4))
        finally:
            set_default_backend("auto")
        torch.testing.assert_close(out, s2rope_attention_reference(q, k, v, pos, (4, 4, 4, 4)), rtol=0, atol=0)


def test_cuda_backend_needs_cuda_tensors(toy_op):
    spec = register_op("toy_cuda_op", backends=("reference", "cuda"), auto={"cuda": ("cuda",)})
    try:
        reason = spec.unavailable_reason("cuda", torch.device("cpu"))
        assert reason is not None and "cuda tensors" in reason
    finally:
        _backend.OPS.pop("toy_cuda_op", None)
