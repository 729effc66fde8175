"""The building blocks of TIES and DARE, as pure tensor functions (tested on hand-made tensors).

- `trim_by_magnitude`: keep the `density` share of entries with the largest |x| (TIES "trim").
- `drop_at_random`: keep each entry with probability `density`, rescale the kept by 1/density so the
  expectation is unchanged (DARE "drop and rescale").
- `elect_sign`: the sign of the sum of the (weighted) task vectors, +1 where the sum is 0 (TIES "elect").
"""

from __future__ import annotations


def kept_count(numel: int, density: float) -> int:
    """How many entries a density keeps: round(density·n), at least one when density > 0."""
    return min(numel, max(1, int(round(density * numel))))


def trim_by_magnitude(x, density: float, rescale: bool = False):
    """x with all but the round(density·n) largest-magnitude entries set to 0 (optionally ÷ density).

    The threshold is the k-th largest |x| (a selection, O(n), not a sort); entries equal to it are
    kept in index order until exactly k are kept. x itself is never modified."""
    import torch

    n = x.numel()
    k = kept_count(n, density)
    if k >= n:
        out = x.clone()
    else:
        mag = x.abs().reshape(-1)
        threshold = torch.kthvalue(mag, n - k + 1).values
        keep = mag >= threshold
        extra = int(keep.sum()) - k
        if extra > 0:  # ties at the threshold: keep the first of them in index order, drop the last `extra`
            keep[torch.nonzero(mag == threshold).view(-1)[-extra:]] = False
        del mag
        out = x.masked_fill(~keep.view(x.shape), 0.0)
    return out.div_(density) if rescale else out


def drop_at_random(x, density: float, generator, rescale: bool = True):
    """x with each entry kept with probability `density` (Bernoulli from `generator`), kept ÷ density."""
    import torch

    if density >= 1.0:
        return x.clone()
    out = x.masked_fill(torch.rand(x.shape, generator=generator) >= density, 0.0)
    return out.div_(density) if rescale else out


def elect_sign(total):
    """+1 / −1 per entry: the sign of the summed task vectors (0 counts as +1, as mergekit does)."""
    import torch

    return torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))
