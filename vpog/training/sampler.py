"""A distributed batch sampler that resumes at any sample, and per-sample seeded augmentation.

The data is read as one stream: epoch 0's permutation of the N samples, then epoch 1's, and so on
(each a fixed function of `seed` and the epoch). Optimiser step k of a run with global batch
G = batch_size x world_size x grad_accum_steps reads stream positions [start + kG, start + (k+1)G); within a
micro-batch, rank r takes a contiguous block of `batch_size` positions. So:

- every sample is read exactly once per epoch across all ranks, with no padding and no dropped tail
  (a global batch may straddle two epochs);
- all ranks always get full, equal batches, so DDP never sees a rank run out early;
- the data position is one integer, the number of stream positions consumed; a resumed run continues
  mid-epoch exactly, even with another world size.

`PositionedDataset` seeds Python's, NumPy's and torch's CPU RNGs from (seed, stream position) before
loading a sample, so random augmentation depends only on the sample's place in the stream, not on
which DataLoader worker loads it or on where a run was resumed.

References: torch.utils.data.DistributedSampler (rank slicing; it pads or drops the tail instead).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info


@dataclass(frozen=True)
class SampleKey:
    """What the sampler hands the dataset: the sample `index` and its `position` in the stream."""

    index: int
    position: int


def _mix(seed: int, value: int) -> int:
    """A 63-bit seed from two integers (splitmix64-style mixing, so nearby inputs give unrelated seeds)."""
    z = (seed * 0x9E3779B97F4A7C15 + value + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class StreamBatchSampler(Sampler[list[SampleKey]]):
    """Endless per-rank batches of `SampleKey`s from the epoch-permutation stream, starting at `start`.

    Args:
        num_samples: dataset length N (> 0).
        batch_size: samples per rank per micro-batch.
        rank, world_size: this rank and the number of ranks.
        seed: permutation seed (the same on every rank).
        shuffle: permute each epoch (False: 0..N-1 in order, for validation).
        start: stream positions already consumed (the resume point; any integer >= 0).
        order: optional `order(epoch) -> sequence of num_samples dataset indices`, the same on every rank
            (e.g. a mix of several training sets by ratio, where an epoch may repeat or leave out samples);
            default: a random permutation of range(num_samples) (or the identity without shuffle).
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, start: int = 0, order=None) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be > 0, got {num_samples} (is the data set empty?)")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {rank}, world_size {world_size}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.start = int(start)
        self.order = order
        self._perm_epoch = -1
        self._perm: list[int] = []

    @property
    def global_batch(self) -> int:
        """Stream positions consumed by one micro-batch of all ranks."""
        return self.batch_size * self.world_size

    def permutation(self, epoch: int) -> list[int]:
        """The order of epoch `epoch` (the same on every rank)."""
        if epoch != self._perm_epoch:
            if self.order is not None:
                perm = [int(i) for i in self.order(epoch)]
                if len(perm) != self.num_samples:
                    raise ValueError(f"order({epoch}) gave {len(perm)} indices, expected num_samples = "
                                     f"{self.num_samples}")
                self._perm = perm
            elif self.shuffle:
                g = torch.Generator().manual_seed(_mix(self.seed, epoch))
                self._perm = torch.randperm(self.num_samples, generator=g).tolist()
            else:
                self._perm = list(range(self.num_samples))
            self._perm_epoch = epoch
        return self._perm

    def index_at(self, position: int) -> int:
        """Dataset index at stream `position`."""
        epoch, offset = divmod(position, self.num_samples)
        return self.permutation(epoch)[offset]

    def batch_at(self, micro_batch: int) -> list[SampleKey]:
        """This rank's keys of micro-batch number `micro_batch` (counted from `start`)."""
        first = self.start + micro_batch * self.global_batch + self.rank * self.batch_size
        return [SampleKey(self.index_at(p), p) for p in range(first, first + self.batch_size)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        k = 0
        while True:
            yield self.batch_at(k)
            k += 1


class PositionedDataset(Dataset):
    """Wraps a map-style dataset so that each sample's randomness is a function of (seed, stream position).

    With `pass_seed=False`, `ds[SampleKey]` seeds Python's, NumPy's and torch's CPU RNGs, then returns
    `base[index]`; in the training process itself (num_workers = 0) the RNG states are saved and
    restored around the call, so loading data does not change the model's random stream (dropout...).
    With `pass_seed=True` it returns `base[(index, sample_seed)]` for datasets that draw from their own
    generator seeded by the caller (`vpog.data.VPOGDataset` does), and leaves the global RNGs alone.
    """

    def __init__(self, base: Dataset, seed: int = 0, pass_seed: bool = False) -> None:
        self.base = base
        self.seed = int(seed)
        self.pass_seed = pass_seed

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: SampleKey):
        if not isinstance(key, SampleKey):
            return self.base[key]
        s = _mix(self.seed, key.position)
        if self.pass_seed:
            return self.base[(key.index, s)]
        if get_worker_info() is not None:
            _seed_cpu_rngs(s)
            return self.base[key.index]
        saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
        try:
            _seed_cpu_rngs(s)
            return self.base[key.index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.set_rng_state(saved[2])


def _seed_cpu_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.default_generator.manual_seed(seed)
