"""Which rows each optimizer step trains on, for one task or a mix of tasks; a pure function of the seed.

Each task's rows are shuffled afresh every epoch and cut into batches, as any trainer's random sampler
would: a batch is a random mix of lengths. (Sorting rows into batches by length saves padding, but
correlates each step's rows, and on rt-sentiment it cost about 0.006 of eval loss; padding is saved
inside each batch instead, models/chunks.py.)

Being a pure function of (task sizes, options, seed) is what lets `--resume` replay the plan to the
checkpoint's step and carry on exactly where the killed run was.

Mixing tasks: task i is drawn with probability p_i ∝ n_i^(1/T) (temperature sampling: T = 1 follows
the data sizes, larger T flattens towards uniform so small tasks are not drowned). With
`mixing="task"` every step trains on one task's batch (objectives never share a step); with
`mixing="mixed"` every step holds a slice of each task sized by p_i, and the step's loss is the
p-weighted sum of the tasks' losses.
"""

from __future__ import annotations

import random
from collections.abc import Iterator


def task_probabilities(sizes: list[int], temperature: float) -> list[float]:
    weights = [n ** (1.0 / temperature) for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def _epochs(size: int, batch_size: int, seed: int) -> Iterator[tuple[int, list[int]]]:
    """(epoch, row indices) forever, each epoch a fresh shuffle from (seed, epoch)."""
    epoch = 0
    while True:
        order = list(range(size))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        for start in range(0, size, batch_size):
            yield epoch, order[start : start + batch_size]
        epoch += 1


def plan(
    sizes: list[int], batch_size: int, seed: int, temperature: float = 2.0, mixing: str = "task"
) -> Iterator[list[tuple[int, list[int], float]]]:
    """Per step, a list of (task index, row indices, share of the step's loss); shares sum to 1."""
    if len(sizes) == 1:
        for _, idx in _epochs(sizes[0], batch_size, seed):
            yield [(0, idx, 1.0)]
        return
    p = task_probabilities(sizes, temperature)
    if mixing == "task":
        streams = [_epochs(n, batch_size, seed + 7919 * i) for i, n in enumerate(sizes)]
        pick = random.Random(seed)
        while True:
            i = pick.choices(range(len(sizes)), weights=p)[0]
            yield [(i, next(streams[i])[1], 1.0)]
    else:
        shares = [max(1, round(pi * batch_size)) for pi in p]
        streams = [_epochs(n, shares[i], seed + 7919 * i) for i, n in enumerate(sizes)]
        while True:
            yield [(i, next(s)[1], p[i]) for i, s in enumerate(streams)]


def steps_per_epoch(sizes: list[int], batch_size: int) -> int:
    """Steps that see as many rows as all tasks hold (the meaning of --epochs for a mix)."""
    return max(1, -(-sum(sizes) // batch_size))
