"""CroCo encoder: CroCo-format checkpoints load by name, and the forward equals CroCo-v2's (RoPE100)."""

from __future__ import annotations

import logging

import pytest
import torch
from croco_reference import croco_decoder_keys, croco_encode, croco_encoder_keys, random_state

from vpog.model import VPOG, CroCoEncoder, EncoderConfig, VPOGConfig, load_croco_encoder

DIM, DEPTH, HEADS = 64, 2, 2  # head dim 32: RoPE2D 8 pairs for y and 8 for x


def _write(path, state, kwargs=None, wrap="model"):
    obj = {k: v.float() for k, v in state.items()}
    if wrap:
        obj = {wrap: obj}
        if kwargs is not None:
            obj["croco_kwargs"] = kwargs
    torch.save(obj, path)
    return path


def _kwargs(pos_embed="RoPE100"):
    return {"enc_embed_dim": DIM, "enc_depth": DEPTH, "enc_num_heads": HEADS, "dec_embed_dim": 32,
            "dec_depth": 1, "dec_num_heads": 2, "pos_embed": pos_embed}


@pytest.fixture
def croco_state():
    g = torch.Generator().manual_seed(1)
    state = random_state(croco_encoder_keys(DEPTH, DIM), g)
    state.update(random_state(croco_decoder_keys(32), g))
    return {k: v.float() for k, v in state.items()}  # float32 values, as a real checkpoint holds


def test_checkpoint_loads_and_forward_matches_croco(tmp_path, croco_state):
    path = _write(tmp_path / "CroCo_V2_test.pth", croco_state, _kwargs())
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS), attention_backend="reference")
    report = load_croco_encoder(enc, path)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.ignored) == sorted(croco_decoder_keys(32))
    assert len(report.loaded) == len(croco_encoder_keys(DEPTH, DIM))
    for k, v in enc.state_dict().items():
        torch.testing.assert_close(v, croco_state[k].float(), rtol=0, atol=0)

    images = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    expected = croco_encode(croco_state, images, DEPTH, HEADS)
    with torch.no_grad():
        got = enc.double().eval()(images)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_checkpoint_through_model_config(tmp_path, croco_state, caplog):
    path = _write(tmp_path / "ckpt.pth", croco_state, _kwargs())
    cfg = VPOGConfig(
        encoder=EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS, checkpoint=str(path)),
        group_attention=dict(depth=1, num_heads=HEADS, rope_n=(6, 6, 2, 2), frame_rope_n=(8, 8, 0, 0)),
        heads=dict(proj_dim=16, flow_hidden_dim=16),
    )
    with caplog.at_level(logging.INFO, logger="vpog.model.croco_checkpoint"):
        model = VPOG(cfg)
    assert model.checkpoint_report is not None and not model.checkpoint_report.missing
    assert "ignored 7 decoder tensors" in caplog.text
    torch.testing.assert_close(model.encoder.enc_norm.bias, croco_state["enc_norm.bias"].float())


def test_plain_state_dict_with_module_prefix(tmp_path, croco_state):
    state = {"module." + k: v for k, v in croco_state.items()}
    path = _write(tmp_path / "plain.pth", state, wrap=None)
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    report = load_croco_encoder(enc, path)
    assert not report.missing
    torch.testing.assert_close(enc.patch_embed.proj.weight, croco_state["patch_embed.proj.weight"].float())


def test_missing_and_unexpected_keys_reported(tmp_path, croco_state):
    del croco_state["enc_blocks.1.mlp.fc2.bias"]
    croco_state["some_other_head.weight"] = torch.zeros(3)
    path = _write(tmp_path / "partial.pth", croco_state, _kwargs())
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    with pytest.raises(ValueError, match="enc_blocks.1.mlp.fc2.bias"):
        load_croco_encoder(enc, path, strict=True)
    report = load_croco_encoder(enc, path, strict=False)
    assert report.missing == ["enc_blocks.1.mlp.fc2.bias"]
    assert report.unexpected == ["some_other_head.weight"]
    torch.testing.assert_close(enc.enc_norm.weight, croco_state["enc_norm.weight"].float())


def test_shape_mismatch_names_the_key(tmp_path, croco_state):
    path = _write(tmp_path / "ckpt.pth", croco_state, _kwargs())
    enc = CroCoEncoder(EncoderConfig(embed_dim=128, depth=DEPTH, num_heads=4))
    with pytest.raises(ValueError, match="patch_embed.proj.weight"):
        load_croco_encoder(enc, path)


def test_croco_v1_rejected(tmp_path, croco_state):
    path = _write(tmp_path / "v1.pth", croco_state, _kwargs("cosine"))
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    with pytest.raises(ValueError, match="v1"):
        load_croco_encoder(enc, path)


def test_missing_file(tmp_path):
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    with pytest.raises(ValueError, match="path"):
        load_croco_encoder(enc, tmp_path / "nope.pth")


def test_encoder_rejects_bad_images():
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=1, num_heads=HEADS))
    with pytest.raises(ValueError, match="images"):
        enc(torch.zeros(1, 3, 112, 112))
