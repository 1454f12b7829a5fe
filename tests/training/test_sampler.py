"""The stream sampler: exactly once per epoch across ranks, equal full batches, exact mid-epoch resume."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vpog.training.sampler import PositionedDataset, SampleKey, StreamBatchSampler


def _stream(n, bs, world, steps, seed=0, start=0):
    """Dataset indices in stream order for `steps` micro-batches of all ranks."""
    samplers = [StreamBatchSampler(n, bs, r, world, seed=seed, start=start) for r in range(world)]
    its = [iter(s) for s in samplers]
    out = []
    for _ in range(steps):
        for it in its:
            out.extend(k.index for k in next(it))
    return out


@pytest.mark.parametrize("n, bs, world", [(20, 3, 2), (17, 4, 3), (5, 2, 4), (9, 1, 1)])
def test_every_sample_once_per_epoch(n, bs, world):
    epochs = 3
    steps = -(-n * epochs // (bs * world)) + 1
    stream = _stream(n, bs, world, steps)
    for e in range(epochs):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n)), f"epoch {e}"
    # epochs are shuffled differently
    if n > 4:
        assert stream[:n] != stream[n:2 * n]


def test_ranks_disjoint_and_positions_contiguous():
    a = StreamBatchSampler(20, 3, 0, 2, seed=5)
    b = StreamBatchSampler(20, 3, 1, 2, seed=5)
    ba, bb = a.batch_at(4), b.batch_at(4)
    assert [k.position for k in ba] == [24, 25, 26]
    assert [k.position for k in bb] == [27, 28, 29]
    assert len(ba) == len(bb) == 3


@pytest.mark.parametrize("resume_step", [1, 3, 5])
def test_resume_at_any_position_continues_the_stream(resume_step):
    n, bs, world = 13, 2, 2
    full = _stream(n, bs, world, 10, seed=3)
    consumed = resume_step * bs * world
    resumed = _stream(n, bs, world, 10 - resume_step, seed=3, start=consumed)
    assert resumed == full[consumed:]


def test_resume_with_another_world_size_keeps_exactly_once():
    n = 12
    first = _stream(n, 2, 2, 2)  # 8 positions with 2 ranks
    rest = _stream(n, 2, 1, 8, start=8)  # continue on 1 rank
    stream = first + rest
    assert sorted(stream[:n]) == list(range(n))
    assert sorted(stream[n:2 * n]) == list(range(n))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="num_samples"):
        StreamBatchSampler(0, 2)
    with pytest.raises(ValueError, match="batch_size"):
        StreamBatchSampler(5, 0)
    with pytest.raises(ValueError, match="rank"):
        StreamBatchSampler(5, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="start"):
        StreamBatchSampler(5, 2, start=-1)


class _Noisy(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand()), random.random()])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_augmentation_depends_only_on_stream_position(num_workers):
    ds = PositionedDataset(_Noisy(), seed=1)

    def collect(start, batches):
        sampler = StreamBatchSampler(10, 3, 0, 1, seed=1, start=start)
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        out = torch.cat([next(it) for _ in range(batches)])
        del it
        return out

    full = collect(0, 4)
    resumed = collect(6, 2)
    torch.testing.assert_close(resumed, full[6:], rtol=0, atol=0)
    # the noise differs between samples and between epochs of the same sample
    assert len(set(full[:, 1].tolist())) == len(full)


def test_main_process_rng_untouched_by_loading():
    ds = PositionedDataset(_Noisy(), seed=1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    ds[SampleKey(index=3, position=99)]
    torch.testing.assert_close(torch.rand(3), expected)


def test_custom_epoch_order_and_passed_seed():
    orders = {0: [2, 2, 0, 1], 1: [1, 0, 3, 3]}
    s = StreamBatchSampler(4, 3, 0, 1, order=lambda e: orders[e % 2])
    it = iter(s)
    assert [k.index for k in next(it)] == [2, 2, 0]
    assert [k.index for k in next(it)] == [1, 1, 0]
    bad = StreamBatchSampler(4, 2, order=lambda e: [0, 1])
    with pytest.raises(ValueError, match="order"):
        bad.batch_at(0)

    class Echo(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, key):
            return key

    ds = PositionedDataset(Echo(), seed=3, pass_seed=True)
    a, b = ds[SampleKey(1, 10)], ds[SampleKey(1, 11)]
    assert a[0] == b[0] == 1 and a[1] != b[1] and ds[SampleKey(1, 10)] == a
