"""Config composition and override checking shared by every vpog CLI."""

from __future__ import annotations

import pytest

from vpog.cli import ConfigError, config_groups, load_config, parse_cli  # noqa: E402


def test_groups_listed():
    groups = config_groups()
    assert {"machine", "data", "model"} <= set(groups)
    assert {"local", "slurm"} <= set(groups["machine"])


def test_group_selection_and_value_override():
    cfg = load_config("train", ["machine=slurm", "data.num_positive_templates=3", "optim.lr=3e-4"])
    assert cfg.machine.name == "slurm"
    assert cfg.data.num_positive_templates == 3
    assert cfg.optim.lr == pytest.approx(3e-4)


def test_small_synthetic_set_differs_only_in_resolution_and_folder():
    full = load_config("train", [])
    small = load_config("train", ["data=synthetic_small"])
    assert small.data.name == "synthetic"
    changed = {k for k in full.data.synthesize if full.data.synthesize[k] != small.data.synthesize[k]}
    assert changed == {"out", "image_size", "template_size"}
    assert small.data.train_datasets[0].root == small.data.synthesize.out == "data_cache/synthetic_small"
    assert {k: v for k, v in full.data.items() if k not in ("synthesize", "train_datasets")} == {
        k: v for k, v in small.data.items() if k not in ("synthesize", "train_datasets")}


def test_defaults_without_overrides():
    cfg = load_config("train")
    assert cfg.machine.name == "local"
    assert cfg.ops.backend == "auto"


@pytest.mark.parametrize(
    "override, named, suggested",
    [
        ("data.num_pos_templates=3", "data.num_pos_templates", "data.num_positive_templates"),
        ("optim.lrr=1", "optim.lrr", "optim.lr"),
        ("machine=slurmm", "slurmm", "slurm"),
    ],
)
def test_unknown_key_names_key_and_closest(override, named, suggested):
    with pytest.raises(ConfigError) as err:
        load_config("train", [override])
    assert named in str(err.value)
    assert suggested in str(err.value)


def test_list_index_keys_are_valid():
    cfg = load_config("train", ["data.train_datasets.0.root=/tmp/x"])
    assert cfg.data.train_datasets[0].root == "/tmp/x"
    with pytest.raises(ConfigError):
        load_config("train", ["data.train_datasets.7.root=/tmp/x"])


def test_explicit_add_is_allowed():
    cfg = load_config("train", ["+extra.note=hello"])
    assert cfg.extra.note == "hello"


def test_struct_mode_rejects_typos_in_code():
    from omegaconf.errors import ConfigAttributeError

    cfg = load_config("train")
    with pytest.raises(ConfigAttributeError):
        cfg.optim.lrr  # noqa: B018


def test_parse_cli_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_cli("train", ["optim.lrr=1"])
    assert exit_info.value.code == 2
    assert "optim.lr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        parse_cli("train", ["--help"], description="train vpog")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "machine: local, slurm" in out and "optim:" in out
    with pytest.raises(SystemExit) as exit_info:
        parse_cli("train", ["--lr", "3"])
    assert exit_info.value.code == 2
