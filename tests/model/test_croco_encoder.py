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


@pytest.mark.parametrize("content", [b"", b"garbage, not a torch file", b"PK\x03\x04truncated zip"])
def test_unreadable_file_is_a_clear_error(tmp_path, content):
    """A truncated or damaged download: one ValueError naming the file (`vpog.check` lists it as a problem)."""
    path = tmp_path / "CroCo_V2_ViTBase_BaseDecoder.pth"
    path.write_bytes(content)
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    with pytest.raises(ValueError, match=r"CroCo_V2_ViTBase_BaseDecoder\.pth is not a readable CroCo checkpoint"):
        load_croco_encoder(enc, path)


def test_encoder_rejects_bad_images():
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=1, num_heads=HEADS))
    with pytest.raises(ValueError, match="images"):
        enc(torch.zeros(1, 3, 112, 112))


# -- strict means strict ----------------------------------------------------------------------------


def test_strict_rejects_a_deeper_checkpoint_naming_its_extra_blocks(tmp_path, croco_state, caplog):
    g = torch.Generator().manual_seed(2)
    deeper = dict(croco_state)
    deeper.update({k: v.float() for k, v in random_state(croco_encoder_keys(DEPTH + 1, DIM), g).items()
                   if k.startswith(f"enc_blocks.{DEPTH}.")})
    declared = _write(tmp_path / "declared.pth", deeper, dict(_kwargs(), enc_depth=DEPTH + 1))
    plain = _write(tmp_path / "plain.pth", deeper, wrap=None)  # no croco_kwargs: the keys tell
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    with pytest.raises(ValueError, match=rf"enc_depth=3 \(encoder.depth={DEPTH}\)"):
        load_croco_encoder(enc, declared)
    with pytest.raises(ValueError, match=rf"enc_blocks\.{DEPTH}\.attn\.qkv\.weight"):
        load_croco_encoder(enc, plain)
    with caplog.at_level(logging.WARNING, logger="vpog.model.croco_checkpoint"):
        report = load_croco_encoder(enc, declared, strict=False)  # on purpose: the first blocks
    assert len(report.unexpected) == 12 and "declares another encoder" in caplog.text
    torch.testing.assert_close(enc.enc_blocks[1].mlp.fc2.weight, croco_state["enc_blocks.1.mlp.fc2.weight"])


def test_strict_compares_heads_with_croco_kwargs(tmp_path, croco_state):
    # the same tensors computed with 4 heads are another function: shapes alone cannot tell
    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=4))
    with pytest.raises(ValueError, match=r"enc_num_heads=2 \(encoder.num_heads=4\)"):
        load_croco_encoder(enc, _write(tmp_path / "a.pth", croco_state, _kwargs()))
    # keys croco_kwargs leaves out are CroCoNet's defaults (12 heads), not "anything goes"
    only_pos = _write(tmp_path / "b.pth", croco_state, {"pos_embed": "RoPE100"})
    with pytest.raises(ValueError, match=r"enc_embed_dim=768 \(encoder.embed_dim=64\).*enc_num_heads=12"):
        load_croco_encoder(CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS)), only_pos)
    # an old file's args.model constructor call is read too
    import argparse

    old = {"model": {k: v.float() for k, v in croco_state.items()},
           "args": argparse.Namespace(model=f"CroCoNet(enc_embed_dim={DIM}, enc_depth={DEPTH}, enc_num_heads=2, "
                                            f"pos_embed='RoPE100')")}
    torch.save(old, tmp_path / "c.pth")
    with pytest.raises(ValueError, match=r"enc_num_heads=2 \(encoder.num_heads=4\)"):
        load_croco_encoder(enc, tmp_path / "c.pth")
    report = load_croco_encoder(CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS)),
                                tmp_path / "c.pth")
    assert not report.missing and not report.unexpected
    assert load_croco_encoder(enc, tmp_path / "a.pth", strict=False).loaded  # non-strict: warns, loads
    # a bare CroCoNet() declares the defaults (12 heads): not "nothing declared"
    bare = {"model": {k: v.float() for k, v in croco_state.items()}, "args": argparse.Namespace(model="CroCoNet()")}
    torch.save(bare, tmp_path / "d.pth")
    with pytest.raises(ValueError, match=r"enc_num_heads=12 \(encoder.num_heads=4\)"):
        load_croco_encoder(enc, tmp_path / "d.pth")


def test_missing_file_says_where_the_weights_are(tmp_path):
    from vpog.model.croco_checkpoint import CheckpointNotFoundError, croco_checkpoint_problem

    enc = CroCoEncoder(EncoderConfig(embed_dim=DIM, depth=DEPTH, num_heads=HEADS))
    path = tmp_path / "CroCo_V2_ViTBase_BaseDecoder.pth"
    with pytest.raises(CheckpointNotFoundError) as err:
        load_croco_encoder(enc, path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "https://download.europe.naverlabs.com/ComputerVision/CroCo/" in message
    assert "model.encoder.checkpoint=null" in message
    assert croco_checkpoint_problem({"encoder": {"checkpoint": str(path)}}) == message
    assert croco_checkpoint_problem({"encoder": {"checkpoint": None}}) is None
    path.write_bytes(b"")
    assert croco_checkpoint_problem({"encoder": {"checkpoint": str(path)}}) is None
