"""Which rows each optimizer step trains on, for one task or a mix of tasks; a pure function of the seed.

Each task's rows are shuffled afresh every epoch and cut into batches, as any trainer's random sampler
would: a batch is a random mix of lengths, and padding is saved inside each batch by cutting it into
length-sorted chunks (models/chunks.py). `grouped` sampling (the HF Trainer's group_by_length) sorts
each run of up to 50 batches of shuffled rows by length before cutting it: batches of similar
length, one pass each, but each step's rows are correlated by length (BENCHMARKS.md measures both).

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


def _epochs(size: int, batch_size: int, seed: int, lengths: list[int] | None = None) -> Iterator[tuple[int, list[int]]]:
    """(epoch, row indices) forever, each epoch a fresh shuffle from (seed, epoch); given the rows'
    lengths, grouped by length (see `grouped`)."""
    epoch = 0
    while True:
        order = list(range(size))
        rng = random.Random(seed * 100_003 + epoch)
        rng.shuffle(order)
        if lengths is None:
            batches = [order[start : start + batch_size] for start in range(0, size, batch_size)]
        else:
            batches = grouped(order, lengths, batch_size, rng)
        for idx in batches:
            yield epoch, idx
        epoch += 1


def grouped(order: list[int], lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of similar length, as transformers' LengthGroupedSampler makes them: the shuffled rows in
    runs of up to 50 batches (fewer for small sets, so an epoch keeps several runs), each run sorted by
    length and cut into batches; then the batches are shuffled, so short and long steps interleave."""
    run = max(1, min(len(order) // (batch_size * 4), 50)) * batch_size
    batches = []
    for start in range(0, len(order), run):
        part = sorted(order[start : start + run], key=lambda i: -lengths[i])
        batches += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def plan(
    sizes: list[int],
    batch_size: int,
    seed: int,
    temperature: float = 2.0,
    mixing: str = "task",
    lengths: list[list[int]] | None = None,
) -> Iterator[list[tuple[int, list[int], float]]]:
    """Per step, a list of (task index, row indices, share of the step's loss); shares sum to 1.
    `lengths` (each task's rows' token counts): grouped sampling; None: random batches."""
    rows: list[list[int] | None] = list(lengths) if lengths else [None] * len(sizes)
    if len(sizes) == 1:
        for _, idx in _epochs(sizes[0], batch_size, seed, rows[0]):
            yield [(0, idx, 1.0)]
        return
    p = task_probabilities(sizes, temperature)
    if mixing == "task":
        streams = [_epochs(n, batch_size, seed + 7919 * i, rows[i]) for i, n in enumerate(sizes)]
        pick = random.Random(seed)
        while True:
            i = pick.choices(range(len(sizes)), weights=p)[0]
            yield [(i, next(streams[i])[1], 1.0)]
    else:
        shares = [max(1, round(pi * batch_size)) for pi in p]
        streams = [_epochs(n, shares[i], seed + 7919 * i, rows[i]) for i, n in enumerate(sizes)]
        while True:
            yield [(i, next(s)[1], p[i]) for i, s in enumerate(streams)]


def steps_per_epoch(sizes: list[int], batch_size: int) -> int:
    """Steps that see as many rows as all tasks hold (the meaning of --epochs for a mix)."""
    return max(1, -(-sum(sizes) // batch_size))
