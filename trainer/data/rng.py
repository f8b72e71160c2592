"""Reproducible randomness: every draw comes from a generator derived from (seed, purpose, ...),
so epoch order, captions and flips are the same after a resume and in any worker process."""
from __future__ import annotations

import hashlib
import random


def derive_seed(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def derive_rng(*parts) -> random.Random:
    return random.Random(derive_seed(*parts))
