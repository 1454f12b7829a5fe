"""Command-line configs for every vpog entry point (`vpog.train`, `vpog.evaluate`, `vpog.data.synthesize`).

Configs are YAML files under `vpog/config/`, composed with hydra-core's compose API (no Hydra
run directories, no per-rank output folders) and overridden Hydra-style on the command line:

    python -m vpog.train machine=slurm data.num_positive_templates=4 optim.lr=3e-4

`group=option` selects a config group file (`machine=slurm` -> `config/machine/slurm.yaml`),
`a.b=value` sets a key that must already exist, `+a.b=value` adds a new key, `~a.b` deletes one.
An unknown key or option is rejected with a message naming it and the closest valid ones.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vpog.config_schema import closest

CONFIG_DIR = Path(__file__).resolve().parent / "config"


class ConfigError(ValueError):
    """A command-line override names a key or option that does not exist."""


def _flat_keys(cfg, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for k in cfg.keys():
        path = f"{prefix}{k}"
        keys.append(path)
        try:
            child = cfg[k]
        except Exception:  # missing values (???) and interpolation errors: the key itself is valid
            continue
        if isinstance(child, DictConfig):
            keys.extend(_flat_keys(child, path + "."))
    return keys


def _key_exists(cfg, key: str) -> bool:
    """Whether dotted `key` names an existing entry (list items by index included, missing '???' values too)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    parent_path, _, last = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    if isinstance(parent, DictConfig):
        return last in parent.keys()  # `in parent` is False for a mandatory value (???) not set yet
    if isinstance(parent, ListConfig):
        return last.isdigit() and int(last) < len(parent)
    return False


def config_groups() -> dict[str, list[str]]:
    """Config groups under `vpog/config/` and their options: {"machine": ["local", "slurm"], ...}."""
    groups = {}
    for d in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir()):
        groups[d.name] = sorted(f.stem for f in d.glob("*.yaml"))
    return groups


def _validate_overrides(config_name: str, overrides: Sequence[str]) -> None:
    """Raise ConfigError for an override naming an unknown group option or key."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except Exception as exc:
        raise ConfigError(f"cannot parse the command-line overrides {list(overrides)}: {exc}") from None
    groups = config_groups()
    group_choices = []
    for ov in parsed:
        key = ov.key_or_group
        if key in groups and ov.is_add() is False and ov.is_delete() is False:
            value = ov.value()
            if isinstance(value, str):
                if value not in groups[key]:
                    raise ConfigError(
                        f"unknown option '{value}' for config group '{key}'; "
                        f"valid: {', '.join(groups[key])} (closest: {closest(value, groups[key])})"
                    )
                group_choices.append(ov.input_line)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base = compose(config_name=config_name, overrides=group_choices)
    valid = _flat_keys(base)
    for ov in parsed:
        key = ov.key_or_group
        if key in groups or ov.is_add() or ov.is_force_add():
            continue
        if not _key_exists(base, key):
            raise ConfigError(
                f"unknown config key '{key}' for '{config_name}'; closest valid keys: {closest(key, valid)} "
                f"(use '+{key}=...' to add a new key on purpose)"
            )


def load_config(config_name: str, overrides: Sequence[str] = ()):
    """Compose `vpog/config/<config_name>.yaml` with Hydra-style `overrides` -> a read-only-structure DictConfig.

    Raises ConfigError naming an unknown key or group option and the closest valid ones.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    if not (CONFIG_DIR / f"{config_name}.yaml").exists():
        raise ConfigError(f"no config '{config_name}' in {CONFIG_DIR}")
    _validate_overrides(config_name, overrides)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    OmegaConf.set_struct(cfg, True)
    return cfg


def parse_cli(config_name: str, argv: Sequence[str] | None = None, description: str = ""):
    """Entry-point helper: overrides from `argv` (default sys.argv[1:]) -> DictConfig.

    `--help`/`-h` prints the description, the config groups and the composed config, then exits 0;
    an unknown key prints the error and exits 2.
    """
    from omegaconf import OmegaConf

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        rest = [a for a in argv if a not in ("-h", "--help")]
        cfg = load_config(config_name, rest)
        groups = "\n".join(f"  {g}: {', '.join(opts)}" for g, opts in config_groups().items())
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else config_name
        print(f"{description}\n\nusage: {prog} [key=value ...] [group=option ...]\n\nconfig groups:\n{groups}\n")
        print(OmegaConf.to_yaml(cfg))
        raise SystemExit(0)
    bad = [a for a in argv if a.startswith("-")]
    if bad:
        print(f"error: unexpected argument {bad[0]!r}: give overrides as key=value "
              f"(see --help)", file=sys.stderr)
        raise SystemExit(2)
    try:
        return load_config(config_name, argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_command(config_name: str, argv: Sequence[str] | None, description: str, body, logger,
                expected: tuple[type[BaseException], ...] = ()) -> int:
    """The shared `main()` of a config-driven command: parse the overrides (exit 2 on an unknown key), set
    up logging, run `body(cfg) -> exit code`. A required key left at `???`, or a ValueError,
    FileNotFoundError, KeyError or one of `expected`, is logged as one line and gives exit code 2."""
    import logging

    from omegaconf.errors import MissingMandatoryValue

    cfg = parse_cli(config_name, argv, description=description)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(body(cfg))
    except MissingMandatoryValue as exc:
        logger.error("missing a required setting: %s (give it as %s=...)", exc.full_key, exc.full_key)
        return 2
    except (ValueError, FileNotFoundError, KeyError, *expected) as exc:
        logger.error("%s", exc)
        return 2
