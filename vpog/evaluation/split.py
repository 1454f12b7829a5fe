"""Object-level split of a training set into training objects and held-out (unseen) objects.

VPOG is judged on objects it never saw, so the split is by object id, not by image: every instance
of a held-out object is excluded from training, and evaluation uses only those instances (their
images may still show training objects around them, as in BOP test scenes).

The split is a pure function of the config and the set's object ids, so the trainer and
`python -m vpog.evaluate` agree on it without sharing state:

    split:
      heldout_objects: null     # explicit held-out ids (wins when given)
      heldout_fraction: 0.25    # else this share of the objects, at least one, at most all but one
      seed: 0                   # which ones: a seeded permutation of the sorted ids

`ObjectSubset` restricts a map-style dataset (e.g. `vpog.data.VPOGDataset`) to the instances of some
objects; it forwards `(index, seed)` keys, as the trainer's `PositionedDataset` sends them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(kw_only=True)
class SplitConfig:
    """Which objects are held out (mirrors `split:` in vpog/config/evaluate.yaml)."""

    heldout_objects: list[int] | None = None
    """Explicit held-out object ids; None: draw `heldout_fraction` of the objects."""
    heldout_fraction: float = 0.25
    """Share of the objects held out when `heldout_objects` is None."""
    seed: int = 0
    """Seed of the draw."""

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"split.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.heldout_objects is not None:
            self.heldout_objects = [int(i) for i in self.heldout_objects]


def split_objects(object_ids: Iterable[int], cfg: SplitConfig | None = None) -> tuple[list[int], list[int]]:
    """(training ids, held-out ids), both sorted, from the set's object ids.

    With explicit `heldout_objects`, ids not in the set raise ValueError (a typo would silently train
    on everything). Otherwise round(fraction x n) objects, at least 1 and at most n - 1, are held out.
    """
    cfg = cfg or SplitConfig()
    ids = sorted({int(i) for i in object_ids})
    if len(ids) < 2:
        raise ValueError(f"object_ids must hold at least 2 objects to split them, got {ids}")
    if cfg.heldout_objects is not None:
        missing = sorted(set(cfg.heldout_objects) - set(ids))
        if missing:
            raise ValueError(f"split.heldout_objects {missing} are not objects of the set (known: {ids})")
        held = sorted(set(cfg.heldout_objects))
        if len(held) == len(ids):
            raise ValueError("split.heldout_objects must leave at least one object for training")
    else:
        k = min(max(1, round(cfg.heldout_fraction * len(ids))), len(ids) - 1)
        order = np.random.default_rng([int(cfg.seed), 9]).permutation(len(ids))
        held = sorted(ids[i] for i in order[:k])
    train = [i for i in ids if i not in set(held)]
    return train, held


def select_instances(instance_objects: Sequence[int] | np.ndarray, object_ids: Iterable[int],
                     max_per_object: int | None = None, seed: int = 0) -> np.ndarray:
    """Positions of the instances whose object is in `object_ids`, at most `max_per_object` each
    (a seeded draw, then sorted, so the same config evaluates the same queries). -> int64 [n]."""
    objs = np.asarray(instance_objects, dtype=np.int64)
    wanted = np.array(sorted({int(i) for i in object_ids}), dtype=np.int64)
    keep = []
    rng = np.random.default_rng([int(seed), 5])
    for o in wanted:
        pos = np.flatnonzero(objs == o)
        if max_per_object is not None and len(pos) > max_per_object:
            pos = np.sort(rng.choice(pos, size=int(max_per_object), replace=False))
        keep.append(pos)
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


class ObjectSubset(torch.utils.data.Dataset):
    """`base` restricted to `indices`; forwards plain and `(index, seed)` keys."""

    def __init__(self, base, indices: Sequence[int] | np.ndarray):
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
            return self.base[(int(self.indices[int(index)]), seed)]
        return self.base[int(self.indices[int(key)])]


def dataset_objects(dataset, set_index: int = 0) -> tuple[np.ndarray, int]:
    """(object id of every usable instance [N], global index offset) of set `set_index` of a
    `vpog.data.VPOGDataset` (its `sources[i].instances` and shard index)."""
    src = dataset.sources[set_index]
    offset = int(sum(dataset.source_sizes[:set_index]))
    return np.asarray(src.index.inst_obj[src.instances], dtype=np.int64), offset


def object_subset(dataset, object_ids: Iterable[int], max_per_object: int | None = None, seed: int = 0,
                  set_index: int = 0) -> ObjectSubset:
    """The instances of `object_ids` in set `set_index` of a VPOGDataset, as an `ObjectSubset`."""
    objs, offset = dataset_objects(dataset, set_index)
    return ObjectSubset(dataset, select_instances(objs, object_ids, max_per_object, seed) + offset)
