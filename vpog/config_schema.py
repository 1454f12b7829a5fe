"""vpog's config dataclasses are the schema of its YAML configs; this module turns one into the other.

Every config section (`optim:`, `data:`, `model:`, `loss:`, `split:`, ...) is a dataclass whose fields
are the section's keys, with their defaults and docstrings. `from_mapping` builds one from the composed
config, nested dataclasses and lists of them included, and rejects an unknown key with a message naming
its full dotted path and the closest valid names; value checks stay in each dataclass's `__post_init__`.

    cfg = from_mapping(OptimConfig, composed.optim, "optim")   # a DictConfig or a plain dict
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


class ConfigKeyError(ValueError):
    """A config section holds a key its schema (a dataclass) does not have."""


def to_plain(node: Any) -> Any:
    """An omegaconf DictConfig / ListConfig as plain dicts and lists (interpolations resolved); anything
    else is returned unchanged. Plain configs never import omegaconf (the data loader runs without it)."""
    omegaconf = sys.modules.get("omegaconf")  # a DictConfig can only exist once omegaconf is imported
    if omegaconf is not None and isinstance(node, (omegaconf.DictConfig, omegaconf.ListConfig)):
        return omegaconf.OmegaConf.to_container(node, resolve=True)
    return node


def closest(word: str, candidates: Sequence[str]) -> str:
    """Up to three of `candidates` close to `word`, comma-separated ("none close" when none is)."""
    near = difflib.get_close_matches(word, candidates, n=3, cutoff=0.5)
    if not near:
        # also match on the last component, e.g. "data.num_pos_templates" vs "...num_positive_templates"
        last = word.rsplit(".", 1)[-1]
        near = [c for c in candidates if difflib.get_close_matches(last, [c.rsplit(".", 1)[-1]], cutoff=0.6)][:3]
    return ", ".join(near) if near else "none close"


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(tp: Any, value: Any, path: str) -> Any:
    """`value` as field type `tp`: mappings become nested dataclasses, lists of mappings lists of them."""
    tp = _strip_optional(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_mapping(tp, value, path)
    if typing.get_origin(tp) is list and isinstance(value, Sequence) and not isinstance(value, str):
        (item,) = typing.get_args(tp) or (Any,)
        item = _strip_optional(item)
        if dataclasses.is_dataclass(item):
            return [from_mapping(item, v, f"{path}[{i}]") if isinstance(v, Mapping) else v
                    for i, v in enumerate(value)]
    return value


def from_mapping(cls: type, values: Mapping[str, Any] | None, section: str):
    """Build dataclass `cls` from `values` (a plain mapping or a DictConfig; None: all defaults).

    Nested dataclass fields (and `list[Dataclass]` fields) are built recursively. An unknown key raises
    ConfigKeyError naming `section.key` and the closest valid keys; a non-mapping raises ConfigKeyError.
    """
    values = to_plain(values)
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigKeyError(f"{section}: expected a mapping of keys to values, got {type(values).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [str(k) for k in values if k not in names]
    if unknown:
        key = unknown[0]
        more = f" (and {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
        raise ConfigKeyError(f"unknown config key '{section}.{key}'{more}; closest valid keys of {section}: "
                             f"{closest(key, names)} (all: {', '.join(names)})")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints.get(k, Any), v, f"{section}.{k}") for k, v in values.items()}
    return cls(**kwargs)
