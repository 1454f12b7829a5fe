"""Object filters of the training data: `train_datasets[i].object_ids` / `exclude_object_ids` and
`VPOGDataset.restrict_objects` keep excluded (e.g. held-out) objects out of indices, sampler lists and
bad-sample replacements."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch

from vpog.config_schema import from_mapping
from vpog.data import DataConfig, MixedSampler, TrainSetConfig, VPOGDataset, build_train_loader
from vpog.data.dataset import SampleError


def config(root, name="synthetic", set_over=None, **over) -> DataConfig:
    entry = {"name": name, "root": str(root), "templates": str(root / "templates"), **(set_over or {})}
    cfg = {"batch_size": 2, "num_positive_templates": 2, "num_negative_templates": 1, "train_datasets": [entry]}
    cfg.update(over)
    return from_mapping(DataConfig, cfg, "data")


def instance_objects(ds: VPOGDataset, s: int = 0) -> np.ndarray:
    src = ds.sources[s]
    return np.asarray(src.index.inst_obj[src.instances], dtype=np.int64)


# ---------------------------------------------------------------- config checks (no data needed)

def test_filter_config_is_checked():
    base = {"name": "a", "root": "/r", "templates": "/t"}
    assert TrainSetConfig(**base, object_ids=[3, 1, 3]).object_ids == [1, 3]
    assert TrainSetConfig(**base, exclude_object_ids=(np.int64(4),)).exclude_object_ids == [4]
    with pytest.raises(ValueError, match=r"train_datasets\[a\]\.object_ids is empty"):
        TrainSetConfig(**base, object_ids=[])
    with pytest.raises(ValueError, match=r"train_datasets\[a\]\.exclude_object_ids must hold integer"):
        TrainSetConfig(**base, exclude_object_ids=[1, "2"])
    with pytest.raises(ValueError, match=r"train_datasets\[a\]\.object_ids must be a list"):
        TrainSetConfig(**base, object_ids=5)
    with pytest.raises(ValueError, match=r"unknown config key 'data.train_datasets\[0\].exclude_objects'"):
        from_mapping(DataConfig, {"train_datasets": [dict(base, exclude_objects=[1])]}, "data")


# ---------------------------------------------------------------- on the tiny rendered set (objects 1 and 2)

@pytest.mark.render
def test_config_filter_counts_and_unknown_ids(tiny_set, tmp_path):
    full = VPOGDataset(config(tiny_set))
    objs = instance_objects(full)
    assert set(objs.tolist()) == {1, 2}
    no2 = VPOGDataset(config(tiny_set, set_over={"exclude_object_ids": [2]}))
    only2 = VPOGDataset(config(tiny_set, set_over={"object_ids": [1, 2], "exclude_object_ids": [1]}))
    assert len(no2) == int((objs == 1).sum()) and len(only2) == int((objs == 2).sum())
    assert len(no2) + len(only2) == len(full) and no2.source_sizes == [len(no2)]
    assert set(instance_objects(no2).tolist()) == {1} and set(instance_objects(only2).tolist()) == {2}
    assert no2.index_stats["synthetic"]["excluded_objects"] == len(only2)
    assert no2.sources[0].objects == [1] and only2.sources[0].objects == [2]
    assert {int(no2[i]["obj_id"]) for i in range(len(no2))} == {1}
    # an id the shards do not hold is a clear error naming it (a typo must not train on everything)
    with pytest.raises(ValueError, match=r"exclude_object_ids names object id\(s\) \[7\]"):
        VPOGDataset(config(tiny_set, set_over={"exclude_object_ids": [2, 7]}))
    with pytest.raises(ValueError, match=r"object_ids names object id\(s\) \[9\]"):
        VPOGDataset(config(tiny_set, set_over={"object_ids": [9]}))
    with pytest.raises(ValueError, match="no usable instances"):
        VPOGDataset(config(tiny_set, set_over={"object_ids": [2], "exclude_object_ids": [2]}))
    # an excluded object needs no templates
    root = shutil.copytree(tiny_set, tmp_path / "no_templates_2", ignore=shutil.ignore_patterns(".vpog_index"))
    (root / "templates" / "synthetic" / "object_poses" / "000002.npy").unlink()
    with pytest.raises(FileNotFoundError, match="obj_id 2"):
        VPOGDataset(config(root))
    assert len(VPOGDataset(config(root, set_over={"exclude_object_ids": [2]}))) == len(no2)


@pytest.mark.render
def test_bad_sample_replacement_stays_in_the_filter(tiny_set, monkeypatch):
    """Every instance but one is broken: each sample goes through many replacement draws, and none of the
    attempted instances (bad or good) may belong to an excluded object."""
    cfg = config(tiny_set, set_over={"exclude_object_ids": [2]}, max_retries=400)
    ds = VPOGDataset(cfg)
    full = VPOGDataset(config(tiny_set, max_retries=400))
    good = int(ds.sources[0].instances[-1])
    attempted: list[int] = []
    real = VPOGDataset._query

    def flaky(self, src, inst, rng):
        attempted.append(int(src.index.inst_obj[inst]))
        if inst != good:
            raise SampleError("bad_json", f"instance {inst} broken for the test")
        return real(self, src, inst, rng)

    monkeypatch.setattr(VPOGDataset, "_query", flaky)
    for i in range(len(ds)):
        sample = ds[(i, 1000 + i)]
        assert int(sample["obj_id"]) == 1
    assert set(attempted) == {1} and sum(ds.skip_counts.values()) == len(attempted) - len(ds) > 3 * len(ds)
    # control: replacement over the unfiltered set (what a subset view of it does) reaches object 2
    attempted.clear()
    ones = np.flatnonzero(instance_objects(full) == 1)
    for i in ones:
        full[(int(i), 1000 + int(i))]
    assert 2 in attempted, "the control must show that unfiltered replacement draws reach object 2"


@pytest.mark.render
def test_restrict_objects_at_run_time(tiny_set):
    full = VPOGDataset(config(tiny_set))
    n = len(full)
    train = full.restrict_objects(0, exclude_object_ids=[2])
    held = full.restrict_objects("synthetic", object_ids=[2])
    configured = VPOGDataset(config(tiny_set, set_over={"exclude_object_ids": [2]}))
    assert np.array_equal(train.sources[0].instances, configured.sources[0].instances)
    assert len(full) == n and set(instance_objects(full).tolist()) == {1, 2}, "the original is unchanged"
    assert len(train) + len(held) == n and train.source_sizes == [len(train)]
    assert train.sources[0].index is full.sources[0].index, "no re-indexing"
    assert train.cfg.train_datasets[0].exclude_object_ids == [2]
    assert full.cfg.train_datasets[0].exclude_object_ids is None
    assert held.cfg.train_datasets[0].object_ids == [2]
    assert train.index_stats["synthetic"]["excluded_objects"] == len(held)
    assert {int(held[i]["obj_id"]) for i in range(len(held))} == {2}
    clone = pickle.loads(pickle.dumps(train))  # what DataLoader workers get
    assert len(clone) == len(train) and np.array_equal(clone.sources[0].instances, train.sources[0].instances)
    with pytest.raises(ValueError, match=r"exclude_object_ids names object id\(s\) \[5\]"):
        full.restrict_objects(0, exclude_object_ids=[5])
    with pytest.raises(ValueError, match="no usable instance left"):
        train.restrict_objects(0, object_ids=[2])
    with pytest.raises(ValueError, match="dataset must be"):
        full.restrict_objects(1, object_ids=[1])
    with pytest.raises(ValueError, match="dataset must be one of"):
        full.restrict_objects("gso", object_ids=[1])


@pytest.mark.render
def test_sampler_ranks_cover_the_filtered_list(tiny_set):
    cfg = config(tiny_set, set_over={"exclude_object_ids": [2]}, batch_size=1)
    loaders = [build_train_loader(cfg, rank=r, world_size=3, num_workers=0, seed=4) for r in range(3)]
    n = len(loaders[0].dataset)
    assert all(len(ld.dataset) == n and ld.sampler.sizes == [n] for ld in loaders)
    full, _ = loaders[0].sampler.epoch_list(0)
    assert len(full) == -(-n // 3) * 3 and sorted(set(full.tolist())) == list(range(n)), "each instance once"
    per_rank = [[i for i, _ in ld.sampler] for ld in loaders]
    for r, idx in enumerate(per_rank):
        assert idx == full[r::3].tolist()
    positions = [set(range(r, len(full), 3)) for r in range(3)]
    assert not (positions[0] & positions[1] or positions[1] & positions[2] or positions[0] & positions[2])
    assert set().union(*map(set, per_rank)) == set(range(n))
    ids = torch.cat([b.obj_id for b in loaders[1]])
    assert len(ids) == len(per_rank[1]) and set(ids.tolist()) == {1}


@pytest.mark.render
def test_filters_are_per_set(tiny_set, tmp_path):
    root = shutil.copytree(tiny_set, tmp_path / "second", ignore=shutil.ignore_patterns(".vpog_index"))
    (root / "templates" / "synthetic").rename(root / "templates" / "second")
    first = {"name": "synthetic", "root": str(tiny_set), "templates": str(tiny_set / "templates"),
             "exclude_object_ids": [1]}
    second = {"name": "second", "root": str(root), "templates": str(root / "templates")}
    cfg = from_mapping(DataConfig, {"batch_size": 2, "num_positive_templates": 2, "num_negative_templates": 1,
                               "train_datasets": [first, second]}, "data")
    ds = VPOGDataset(cfg)
    assert set(instance_objects(ds, 0).tolist()) == {2} and set(instance_objects(ds, 1).tolist()) == {1, 2}
    both = ds.restrict_objects("second", exclude_object_ids=[2])
    assert both.source_sizes[0] == ds.source_sizes[0] and set(instance_objects(both, 1).tolist()) == {1}
    sampler = MixedSampler(both.source_sizes, both.ratios, seed=0)
    seen = {(int(both[k]["dataset_id"]), int(both[k]["obj_id"])) for k in sampler}
    assert seen == {(0, 2), (1, 1)}
