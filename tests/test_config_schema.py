"""vpog.config_schema: dataclasses as the config schema, and where each config value lives."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

from vpog.cli import CONFIG_DIR, load_config
from vpog.config_schema import ConfigKeyError, from_mapping, to_plain


@dataclass(kw_only=True)
class Inner:
    size: int = 1
    names: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    maybe: Inner | None = None
    items: list[Inner] = field(default_factory=list)
    rate: float = 0.5

    def __post_init__(self):
        if self.rate < 0:
            raise ValueError("rate must be >= 0")


def test_nested_sections_and_lists_are_built():
    cfg = from_mapping(Outer, {"inner": {"size": 3}, "maybe": {"names": ["a"]}, "items": [{"size": 4}, {}]}, "top")
    assert cfg == Outer(inner=Inner(size=3), maybe=Inner(names=["a"]), items=[Inner(size=4), Inner()], rate=0.5)
    assert from_mapping(Outer, None, "top") == Outer()


def test_dictconfig_input_is_resolved():
    node = OmegaConf.create({"rate": "${inner.size}", "inner": {"size": 2}})
    assert from_mapping(Outer, node, "top") == Outer(inner=Inner(size=2), rate=2)
    assert to_plain(OmegaConf.create({"a": [1, {"b": 2}]})) == {"a": [1, {"b": 2}]}
    plain = {"a": 1}
    assert to_plain(plain) is plain


def test_unknown_keys_name_their_full_path_and_the_closest_valid_ones():
    with pytest.raises(ConfigKeyError, match=r"unknown config key 'top\.rte'.*closest valid keys of top: rate"):
        from_mapping(Outer, {"rte": 1.0}, "top")
    with pytest.raises(ConfigKeyError, match=r"'top\.items\[1\]\.sise'.*closest valid keys of top\.items\[1\]: size"):
        from_mapping(Outer, {"items": [{"size": 1}, {"sise": 2}]}, "top")
    with pytest.raises(ConfigKeyError, match=r"'top\.inner\.x' \(and y\)"):
        from_mapping(Outer, {"inner": {"x": 1, "y": 2}}, "top")
    with pytest.raises(ConfigKeyError, match="top: expected a mapping"):
        from_mapping(Outer, [1, 2], "top")
    assert issubclass(ConfigKeyError, ValueError)


def test_value_checks_stay_in_the_dataclass():
    with pytest.raises(ValueError, match="rate must be >= 0"):
        from_mapping(Outer, {"rate": -1.0}, "top")


def _leaf_keys(node, prefix=""):
    keys = set()
    for k, v in node.items():
        if k == "defaults":
            continue
        path = f"{prefix}{k}"
        keys |= _leaf_keys(v, path + ".") if isinstance(v, dict) else {path}
    return keys


def test_train_yaml_holds_no_value_that_every_preset_overrides():
    """A value in train.yaml that every preset sets again never takes effect: it must live in the presets."""
    base = _leaf_keys(OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train.yaml")))
    presets = sorted((CONFIG_DIR / "preset").glob("*.yaml"))
    assert len(presets) >= 2
    always = set.intersection(*(_leaf_keys(OmegaConf.to_container(OmegaConf.load(p))) for p in presets))
    assert "optim.max_steps" in always  # the check sees the presets' schedules
    assert not base & always, f"train.yaml sets values every preset overrides: {sorted(base & always)}"


@pytest.mark.parametrize("preset", ["demo", "full"])
def test_every_preset_composes_a_complete_schedule(preset):
    from vpog.training.trainer import TrainerConfig

    cfg = load_config("train", [f"preset={preset}"])
    for key in ("optim.lr", "optim.warmup_steps", "optim.max_steps", "checkpoint.every_steps", "log.every_steps",
                "log.image_every_steps", "log.val_every_steps", "log.val_batches"):
        assert OmegaConf.select(cfg, key) is not None, f"preset={preset} leaves {key} unset"
    c = TrainerConfig.from_config(cfg)
    assert c.optim.max_steps == cfg.optim.max_steps and c.log.val_batches == cfg.log.val_batches


def test_plain_configs_never_import_omegaconf():
    """The GPU image and the data loader's workers may lack omegaconf: plain dicts must not need it."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["omegaconf"] = None
from dataclasses import dataclass
from vpog.config_schema import from_mapping
@dataclass
class C:
    a: int = 1
assert from_mapping(C, {"a": 2}, "c") == C(a=2)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
