"""Model config dataclasses and the YAML files that mirror them."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from model_helpers import tiny_config

from vpog.model import EncoderConfig, GroupAttentionConfig, HeadConfig, VPOGConfig, vpog_config_from_dict

YAML_DIR = Path(__file__).resolve().parents[2] / "vpog" / "config" / "model"
NAMES = ("vpog_vitb", "vpog_vitl", "vpog_tiny")


def _fields(cls):
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("name", NAMES)
def test_yaml_mirrors_the_dataclasses(name):
    omegaconf = pytest.importorskip("omegaconf")
    raw = omegaconf.OmegaConf.to_container(omegaconf.OmegaConf.load(YAML_DIR / f"{name}.yaml"))
    assert set(raw) == _fields(VPOGConfig)
    for key, cls in (("encoder", EncoderConfig), ("group_attention", GroupAttentionConfig), ("heads", HeadConfig)):
        assert set(raw[key]) == _fields(cls), key
    from vpog.model import load_model_config

    cfg = load_model_config(name)
    assert cfg.name == name
    assert cfg == load_model_config(YAML_DIR / f"{name}.yaml")


def test_yaml_values():
    pytest.importorskip("omegaconf")
    from vpog.model import load_model_config

    b, l, t = (load_model_config(n) for n in NAMES)
    assert (b.encoder.embed_dim, b.encoder.depth, b.encoder.num_heads) == (768, 12, 12)
    assert (l.encoder.embed_dim, l.encoder.depth, l.encoder.num_heads) == (1024, 24, 16)
    assert b.group_attention.rope_n == (10, 10, 6, 6) and l.group_attention.num_heads == 16
    assert t == tiny_config()
    for cfg in (b, l):  # everything else is the dataclass default
        assert cfg.heads == HeadConfig() and cfg.encoder.rope_base == 100.0


def test_dict_round_trip_and_unknown_keys():
    cfg = tiny_config()
    assert vpog_config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="encoder.embed_dimm"):
        vpog_config_from_dict({"encoder": {"embed_dimm": 3}})
    with pytest.raises(ValueError, match="model.heads_x"):
        vpog_config_from_dict({"heads_x": {}})


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(encoder=dict(embed_dim=100, num_heads=3)), "encoder.embed_dim"),
        (dict(encoder=dict(embed_dim=120, num_heads=4)), "head dim"),
        (dict(encoder=dict(image_std=(1.0, 0.0, 1.0))), "encoder.image_std"),
        (dict(group_attention=dict(num_heads=5)), "group_attention.num_heads"),
        (dict(group_attention=dict(rope_n=(10, 10, 6, 5))), "group_attention.rope_n"),
        (dict(group_attention=dict(frame_rope_n=(14, 14, 2, 2))), "group_attention.frame_rope_n"),
        (dict(group_attention=dict(rope_n=(10, 10, 6))), "group_attention.rope_n"),
        (dict(heads=dict(init_temperature=0.001)), "heads.init_temperature"),
        (dict(heads=dict(flow_b_min=0.0)), "heads.flow_b_min"),
        (dict(attention_backend="fast"), "attention_backend"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        VPOGConfig(**kwargs)


def test_model_package_imports_without_omegaconf_or_hydra():
    """The GPU machine has neither: vpog.model and vpog.losses must import (and build) without them."""
    code = ("import sys; sys.modules['omegaconf'] = None; sys.modules['hydra'] = None; "
            "import vpog.model, vpog.losses; vpog.model.VPOGConfig(); print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
