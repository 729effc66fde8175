"""Length-aware batches: rows of similar length share a batch, so little compute goes to padding.

Rows are shuffled (seeded), cut into pools of `pool_batches` batches, sorted by length inside each
pool, cut into batches, and the batch order is shuffled again. Every row appears once per epoch.
"""

from __future__ import annotations

import random


def length_batches(lengths: list[int], batch_size: int, seed: int, pool_batches: int = 16) -> list[list[int]]:
    """Index batches for one epoch; deterministic for a given seed."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches
