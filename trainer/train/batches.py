"""Optimizer steps from the dataset's batches: this rank's share, grouped for gradient accumulation.

The dataset fixes each epoch's batch order from (seed, epoch). Rank r of W takes batches r, r+W, …
(wrapping round so every rank runs the same number of steps); consecutive groups of
`gradient_accumulation_steps` batches make one optimizer step. Resuming mid-epoch skips whole steps.
Each key handed to the loader carries the global step it trains in, so a worker process builds its batch (token
warm-up captions) from the key alone: the same in a resumed run and with any number of workers.
"""
from __future__ import annotations

import math
from dataclasses import replace

from torch.utils.data import DataLoader, Sampler


def rank_share(n_batches: int, rank: int, world: int) -> list[int]:
    per_rank = math.ceil(n_batches / world)
    return [(rank + i * world) % n_batches for i in range(per_rank)]


def steps_per_epoch(n_batches: int, world: int, accumulation: int) -> int:
    return math.ceil(math.ceil(n_batches / world) / accumulation) if n_batches else 0


class _KeySampler(Sampler):
    def __init__(self):
        self.keys = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)


class StepBatches:
    """`for batches in steps.epoch(e, skip_steps=k)` → lists of `accumulation` batches."""

    def __init__(self, dataset, rank: int = 0, world: int = 1, accumulation: int = 1, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False):
        self.dataset = dataset
        self.rank, self.world, self.accumulation = rank, world, max(1, accumulation)
        self._sampler = _KeySampler()
        self.loader = DataLoader(dataset, batch_size=None, sampler=self._sampler, num_workers=num_workers,
                                 pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
                                 prefetch_factor=4 if num_workers else None)

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.dataset.batches_per_epoch(), self.world, self.accumulation)

    def epoch(self, epoch: int, skip_steps: int = 0):
        self.dataset.set_epoch(epoch)
        keys = self.dataset.epoch_batches(epoch)
        first = (epoch - 1) * self.steps_per_epoch()  # every epoch but the last runs steps_per_epoch steps
        mine = [replace(keys[i], step=first + n // self.accumulation)
                for n, i in enumerate(rank_share(len(keys), self.rank, self.world))]
        self._sampler.keys = mine[skip_steps * self.accumulation:]
        group = []
        for batch in self.loader:
            group.append(batch)
            if len(group) == self.accumulation:
                yield group
                group = []
        if group:
            yield group
