"""Atomic checkpoints: layout, keep-last-k, newest-valid resume and fallback over every kind of damage."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from vpog.training.checkpoint import (
    CheckpointConfig,
    Checkpointer,
    CheckpointError,
    find_latest_valid,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _state(step: int) -> dict:
    return {"model": {"w": torch.full((5, 3), float(step))}, "rng": [torch.random.get_rng_state()],
            "data": {"samples_consumed": 6 * step}, "python": (3, (1, 2, 3), None)}


def test_round_trip_and_manifest(tmp_path):
    path = save_checkpoint(tmp_path, 7, _state(7))
    assert path.name == "ckpt_000000007.pt"
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["step"] == 7 and manifest["bytes"] == path.stat().st_size
    state = load_checkpoint(path)
    assert state["step"] == 7
    torch.testing.assert_close(state["model"]["w"], torch.full((5, 3), 7.0))
    assert state["data"]["samples_consumed"] == 42
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_keep_last_k(tmp_path):
    ck = Checkpointer(tmp_path, CheckpointConfig(every_steps=1, keep_last=2))
    for step in (1, 2, 3, 4):
        ck.save(step, _state(step))
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt_000000003.json", "ckpt_000000003.pt", "ckpt_000000004.json", "ckpt_000000004.pt"]
    assert ck.latest()[1]["step"] == 4


def test_keep_last_must_be_at_least_two():
    with pytest.raises(ValueError, match="checkpoint.keep_last"):
        CheckpointConfig(keep_last=1)
    with pytest.raises(ValueError, match="checkpoint.every_steps"):
        CheckpointConfig(every_steps=0)


def _flip_byte(path, offset_fraction=0.5):
    data = bytearray(path.read_bytes())
    i = int(len(data) * offset_fraction)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "no_manifest", "garbage_manifest", "garbage"])
def test_corrupt_newest_falls_back_with_warning(tmp_path, caplog, damage):
    for step in (3, 6):
        save_checkpoint(tmp_path, step, _state(step))
    newest = tmp_path / "ckpt_000000006.pt"
    if damage == "bitflip":
        _flip_byte(newest)
    elif damage == "truncate":
        newest.write_bytes(newest.read_bytes()[:100])
    elif damage == "no_manifest":  # killed between the payload's rename and the manifest's
        newest.with_suffix(".json").unlink()
    elif damage == "garbage_manifest":
        newest.with_suffix(".json").write_text("{not json")
    else:  # a valid-looking manifest over bytes torch cannot read
        junk = b"x" * 64
        newest.write_bytes(junk)
        import hashlib

        newest.with_suffix(".json").write_text(json.dumps(
            {"step": 6, "sha256": hashlib.sha256(junk).hexdigest(), "bytes": 64}))
    with pytest.raises(CheckpointError):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING, logger="vpog.training.checkpoint"):
        path, state = find_latest_valid(tmp_path)
    assert path.name == "ckpt_000000003.pt" and state["step"] == 3
    assert "ckpt_000000006.pt" in caplog.text and "falling back" in caplog.text


def test_all_corrupt_or_empty_gives_none(tmp_path):
    assert find_latest_valid(tmp_path) is None
    assert find_latest_valid(tmp_path / "missing") is None
    save_checkpoint(tmp_path, 1, _state(1))
    _flip_byte(tmp_path / "ckpt_000000001.pt")
    assert find_latest_valid(tmp_path) is None


def test_interrupted_save_leaves_previous_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 2, _state(2))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 4, _state(4))
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert find_latest_valid(tmp_path)[1]["step"] == 2


def test_stale_temporaries_removed_and_resume_off(tmp_path):
    (tmp_path / ".ckpt_000000009.pt.tmp-1234").write_bytes(b"partial")
    save_checkpoint(tmp_path, 1, _state(1))
    ck = Checkpointer(tmp_path, CheckpointConfig(resume=False))
    assert not (tmp_path / ".ckpt_000000009.pt.tmp-1234").exists()
    assert ck.latest() is None
    assert ck.due(200) and not ck.due(0) and not ck.due(199)
    assert os.path.exists(tmp_path / "ckpt_000000001.pt")
