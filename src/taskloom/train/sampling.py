"""Which rows each optimizer step trains on, for one task or a mix of tasks; a pure function of the seed.

Being a pure function of (lengths, options, seed) is what lets `--resume` replay the plan to the
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

from taskloom.train.batching import length_batches


def task_probabilities(sizes: list[int], temperature: float) -> list[float]:
    weights = [n ** (1.0 / temperature) for n in sizes]
    total = sum(weights)
    return [w / total for w in weights]


def _epochs(lengths: list[int], batch_size: int, seed: int) -> Iterator[tuple[int, list[int]]]:
    """(epoch, row indices) forever, each epoch a fresh length-aware shuffle from (seed, epoch)."""
    epoch = 0
    while True:
        for batch in length_batches(lengths, batch_size, seed=seed * 100_003 + epoch):
            yield epoch, batch
        epoch += 1


def plan(lengths: list[list[int]], batch_size: int, seed: int, temperature: float = 2.0,
         mixing: str = "task") -> Iterator[list[tuple[int, list[int], float]]]:
    """Per step, a list of (task index, row indices, share of the step's loss); shares sum to 1."""
    if len(lengths) == 1:
        for _, idx in _epochs(lengths[0], batch_size, seed):
            yield [(0, idx, 1.0)]
        return
    p = task_probabilities([len(x) for x in lengths], temperature)
    if mixing == "task":
        streams = [_epochs(x, batch_size, seed + 7919 * i) for i, x in enumerate(lengths)]
        pick = random.Random(seed)
        while True:
            i = pick.choices(range(len(lengths)), weights=p)[0]
            yield [(i, next(streams[i])[1], 1.0)]
    else:
        sizes = [max(1, round(pi * batch_size)) for pi in p]
        streams = [_epochs(x, sizes[i], seed + 7919 * i) for i, x in enumerate(lengths)]
        while True:
            yield [(i, next(s)[1], p[i]) for i, s in enumerate(streams)]


def steps_per_epoch(lengths: list[list[int]], batch_size: int) -> int:
    """Steps that see as many rows as all tasks hold (the meaning of --epochs for a mix)."""
    return max(1, -(-sum(len(x) for x in lengths) // batch_size))
