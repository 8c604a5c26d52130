"""Which videos each process trains on in each epoch, as a function of (seed, epoch, rank) only.

Because the order never depends on what ran before, a run resumed at epoch ``e`` (or part-way
through it, by skipping the batches already consumed) sees exactly the batches an uninterrupted
run would have seen.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from core.seeding import derive_seed


class EpochSampler(Sampler[int]):
    """Dataset indices for one rank in one epoch.

    The epoch's order is a permutation drawn from ``(seed, epoch)`` (identity without ``shuffle``);
    rank ``r`` of ``world_size`` takes positions ``r, r + world_size, ...``. With ``pad`` the order is
    wrapped round so every rank gets the same count (DDP needs every rank to take the same number of
    steps); without it (validation) no video is counted twice. ``limit`` caps the count per rank and
    ``set_epoch(epoch, skip)`` starts ``skip`` indices in (resuming part-way through an epoch).
    """

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0, pad: bool = True, limit: int = 0):
        self.size = size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.pad = pad
        if pad:
            self.per_rank = math.ceil(size / world_size)
        else:
            self.per_rank = len(range(rank, size, world_size))
        self.limit = limit
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def epoch_count(self) -> int:
        """Indices this rank takes in a whole epoch (before ``skip``)."""
        return min(self.per_rank, self.limit) if self.limit > 0 else self.per_rank

    def __len__(self) -> int:
        return max(0, self.epoch_count() - self.skip)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator)  # (size,)
        else:
            order = torch.arange(self.size)
        if self.pad and self.size % self.world_size:
            wrap = self.per_rank * self.world_size - self.size
            order = torch.cat([order, order.repeat(math.ceil(wrap / self.size))[:wrap]])
        mine = order[self.rank :: self.world_size][: self.epoch_count()]  # (per_rank,) or fewer
        return iter(mine[self.skip :].tolist())
