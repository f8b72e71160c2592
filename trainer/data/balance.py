"""How regularization images are balanced against training images (documented in docs/dataset.md).

Kohya registers reg images in sorted path order until their repeat-weighted count reaches the
training count, so extra reg images are never used and the same ones are used every epoch. Here:

1. Target per epoch T = sum of training images x repeats of the dataset (Kohya's total, so step
   counts match Kohya's "regularization doubles the steps").
2. The reg pool is every reg image x its folder repeats. Each bucket gets a fixed quota of T in
   proportion to its share of the pool (largest remainders, ties to the smaller bucket), so the
   number of batches per epoch is the same in every epoch.
3. In each bucket the pool is walked through a stream of seeded permutations, epoch e taking the
   next `quota` entries: over the run every reg image is used equally often (+-1), different ones
   in different epochs, and the choice depends only on (seed, epoch).
"""
from __future__ import annotations

from .rng import derive_rng

Sample = tuple[int, int]  # (item index, occurrence)


def bucket_quotas(target: int, pool_sizes: dict[tuple[int, int], int]) -> dict[tuple[int, int], int]:
    """Split `target` over buckets in proportion to their pool sizes (largest remainder method)."""
    total = sum(pool_sizes.values())
    if target <= 0 or total <= 0:
        return {b: 0 for b in pool_sizes}
    exact = {b: target * n / total for b, n in pool_sizes.items()}
    quotas = {b: int(x) for b, x in exact.items()}
    left = target - sum(quotas.values())
    by_remainder = sorted(pool_sizes, key=lambda b: (-(exact[b] - quotas[b]), b[0] * b[1], b))
    for b in by_remainder[:left]:
        quotas[b] += 1
    return quotas


def select_reg(pool: list[Sample], quota: int, epoch: int, seed: int, key) -> list[Sample]:
    """The `quota` reg samples of `pool` used in `epoch` (1-based)."""
    n = len(pool)
    if n == 0 or quota <= 0:
        return []
    chosen: list[Sample] = []
    position = (epoch - 1) * quota
    while len(chosen) < quota:
        cycle, offset = divmod(position, n)
        order = list(range(n))
        derive_rng(seed, "reg", key, cycle).shuffle(order)
        take = min(quota - len(chosen), n - offset)
        chosen.extend(pool[i] for i in order[offset:offset + take])
        position += take
    return chosen
