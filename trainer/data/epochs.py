"""Which samples each epoch holds and in what order: pure Python, so preflight needs no torch.

Epochs are numbered from 1 as in Kohya. `epoch_batches(epoch)` is a pure function of the scan and
the seed, so a resumed run (StepBatches.epoch(e, skip_steps=k)) sees exactly the batches it would have seen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .balance import bucket_quotas, select_reg
from .errors import DatasetError
from .rng import derive_rng
from .scan import ScanResult


@dataclass(frozen=True)
class BatchKey:
    """What the sampler hands a worker: everything needed to build one batch, no shared state."""

    epoch: int
    index: int  # position in the epoch
    dataset: int
    bucket: tuple[int, int]
    samples: tuple[tuple[int, int], ...]  # (item index, occurrence)
    step: int | None = None  # the optimizer step (from 0) it trains in; StepBatches sets it (token warm-up)


class EpochPlan:
    """Training samples (images x repeats) plus balanced regularization samples, per bucket, batched."""

    def __init__(self, scan: ScanResult, seed: int):
        if not any(not it.is_reg for it in scan.items):
            raise DatasetError("no usable training image: nothing to train on",
                               "check the preflight report for skipped files and folder errors")
        self.scan = scan
        self.seed = seed
        self._memo: tuple[int, list[BatchKey]] | None = None
        self._train, self._reg_pools, self._reg_quotas = self._group_samples()

    # ---- sample bookkeeping ---------------------------------------------------------------------
    def _group_samples(self):
        """Per dataset and bucket: the fixed training samples, the reg pool and its per-epoch quota."""
        train, pools, quotas = [], [], []
        for d_index, ds in enumerate(self.scan.datasets):
            t: dict[tuple[int, int], list] = {}
            r: dict[tuple[int, int], list] = {}
            for subset in ds.subsets:
                target = r if subset.spec.is_reg else t
                for i in subset.items:
                    bucket = self.scan.items[i].placement.bucket
                    target.setdefault(bucket, []).extend((i, k) for k in range(subset.spec.num_repeats))
            train_total = sum(len(v) for v in t.values())
            q = bucket_quotas(train_total, {b: len(v) for b, v in r.items()})
            train.append(t)
            pools.append(r)
            quotas.append(q)
        return train, pools, quotas

    def samples_per_epoch(self) -> tuple[int, int]:
        """(training samples, regularization samples) in every epoch."""
        return (sum(len(v) for t in self._train for v in t.values()),
                sum(sum(q.values()) for q in self._reg_quotas))

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Samples per bucket in one epoch (training + balanced regularization)."""
        counts: dict[tuple[int, int], int] = {}
        for t, q in zip(self._train, self._reg_quotas):
            for b in set(t) | set(q):
                counts[b] = counts.get(b, 0) + len(t.get(b, [])) + q.get(b, 0)
        return dict(sorted(counts.items()))

    def batches_per_epoch(self) -> int:
        total = 0
        for d_index, (t, q) in enumerate(zip(self._train, self._reg_quotas)):
            bs = self.scan.datasets[d_index].spec.batch_size
            for b in set(t) | set(q):
                total += math.ceil((len(t.get(b, [])) + q.get(b, 0)) / bs)
        return total

    # ---- order ----------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[BatchKey]:
        if self._memo and self._memo[0] == epoch:
            return self._memo[1]
        batches = []
        for d_index, (t, pools, quotas) in enumerate(zip(self._train, self._reg_pools, self._reg_quotas)):
            bs = self.scan.datasets[d_index].spec.batch_size
            for bucket in sorted(set(t) | set(pools)):
                samples = list(t.get(bucket, []))
                samples += select_reg(pools.get(bucket, []), quotas.get(bucket, 0), epoch, self.seed,
                                      (d_index, bucket))
                derive_rng(self.seed, "bucket", epoch, d_index, bucket).shuffle(samples)
                for start in range(0, len(samples), bs):
                    batches.append((d_index, bucket, tuple(samples[start:start + bs])))
        derive_rng(self.seed, "order", epoch).shuffle(batches)
        keys = [BatchKey(epoch, n, d, b, s) for n, (d, b, s) in enumerate(batches)]
        self._memo = (epoch, keys)
        return keys
