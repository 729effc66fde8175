"""The building blocks of TIES and DARE, as pure tensor functions (tested on hand-made tensors).

- `trim_by_magnitude`: keep the `density` share of entries with the largest |x| (TIES "trim").
- `drop_at_random`: keep each entry with probability `density`, rescale the kept by 1/density so the
  expectation is unchanged (DARE "drop and rescale").
- `elect_sign`: the sign of the sum of the (weighted) task vectors, +1 where the sum is 0 (TIES "elect").
- `magnitude_cut` + `trim_block`: the same trim for a tensor merged in blocks of rows (one block in
  memory at a time), with the same result entry for entry.
"""

from __future__ import annotations

from dataclasses import dataclass


def kept_count(numel: int, density: float) -> int:
    """How many entries a density keeps: round(density·n), at least one when density > 0."""
    return min(numel, max(1, round(density * numel)))


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


@dataclass
class MagnitudeCut:
    """`trim_by_magnitude`'s decision for a whole tensor, found block by block so a tensor too large to
    copy is never held whole: keep |x| > `value`, and of the entries equal to it the first `equal_kept`
    in index order. `equal_before[b]` counts the entries equal to `value` before block b (only when
    some of them are dropped). `value` None keeps everything."""

    value: float | None
    equal_kept: int = 0
    equal_before: list[int] | None = None


def _magnitude_bits(x):
    """|x| of a float tensor as int32 bit patterns, flat: for non-negative floats the integer order is
    the value order, so the k-th largest magnitude is the k-th largest integer (a radix selection)."""
    import torch

    return x.detach().float().abs().reshape(-1).view(torch.int32)


def _kth_bin(counts, k: int) -> tuple[int, int]:
    """(bin holding the k-th largest entry, how many entries lie in higher bins), from bin counts."""
    import torch

    from_top = counts.flip(0).cumsum(0)
    j = int(torch.searchsorted(from_top, torch.tensor([k], dtype=from_top.dtype)))
    return len(counts) - 1 - j, int(from_top[j - 1]) if j > 0 else 0


def magnitude_cut(blocks, numel: int, density: float) -> MagnitudeCut:
    """The cut of `trim_by_magnitude(x, density)` for x given as `blocks()`, a callable returning the
    blocks of x in index order (called two or three times). Memory: one block and two count tables.

    Exact: the k-th largest |x| is selected on the float bit patterns, high 16 bits first, then the
    low 16 bits inside the chosen high bin; entries tied with it are kept in index order as
    `trim_by_magnitude` keeps them."""
    import torch

    k = kept_count(numel, density)
    if k >= numel:
        return MagnitudeCut(None)
    high = torch.zeros(1 << 15, dtype=torch.int64)  # sign bit is 0: 15 high bits
    for x in blocks():
        high += torch.bincount(_magnitude_bits(x) >> 16, minlength=1 << 15)
    hi, above = _kth_bin(high, k)
    low = torch.zeros(1 << 16, dtype=torch.int64)
    for x in blocks():
        # the low 16 bits of the entries in bin `hi`, counted at 1..65536; entries below the bin
        # land at 0, above it at 65537 (clamped), so no entry is selected by a branch
        inside = _magnitude_bits(x).sub_((hi << 16) - 1).clamp_(0, (1 << 16) + 1)
        low += torch.bincount(inside, minlength=(1 << 16) + 2)[1 : (1 << 16) + 1]
    need = k - above
    lo, above_in_bin = _kth_bin(low, need)
    value = float(torch.tensor([(hi << 16) | lo], dtype=torch.int32).view(torch.float32))
    equal, equal_kept = int(low[lo]), need - above_in_bin
    cut = MagnitudeCut(value, equal_kept)
    if equal_kept < equal:  # ties at the cut: the first `equal_kept` of them in index order stay
        cut.equal_before, seen = [], 0
        for x in blocks():
            cut.equal_before.append(seen)
            seen += int((x.detach().float().abs() == value).sum())
    return cut


def trim_block(x, cut: MagnitudeCut, block: int, density: float, rescale: bool = False):
    """Block number `block` of `trim_by_magnitude(whole, density, rescale)`, given the whole tensor's cut."""
    import torch

    if cut.value is None:
        out = x.clone()
        return out.div_(density) if rescale else out
    # the entries equal to the cut that this block keeps: all of them, or the first `some` (maybe 0)
    all_equal, some = True, None
    if cut.equal_before is not None:
        last = block + 1 == len(cut.equal_before)
        if last or cut.equal_before[block + 1] > cut.equal_kept:
            all_equal, some = False, max(cut.equal_kept - cut.equal_before[block], 0)
    mag = x.detach().abs()
    first_equal = torch.nonzero((mag == cut.value).view(-1)).view(-1)[:some] if some else None
    if cut.value > 0 and x.dtype == torch.float32:
        # The kept entries as a 0/1 float mask, with no branch per entry (a select on a random
        # pattern is several times slower): |x| − t > 0 exactly when |x| > t (a difference of two
        # floats is 0 only when they are equal); t = the float32 just under the cut keeps the
        # entries equal to it too. x is finite (the caller checks); x·0 is −0.0 for a negative x,
        # and adding +0.0 makes each dropped entry +0.0, as a select does.
        f32 = torch.float32
        value = torch.tensor(cut.value, dtype=f32)
        t = float(torch.nextafter(value, torch.tensor(0.0, dtype=f32))) if all_equal else cut.value
        mask = mag.sub_(t).clamp_min_(0.0).sign_()
        if first_equal is not None:
            mask.view(-1)[first_equal] = 1.0
        out = mask.mul_(x).add_(0.0)
    else:
        keep = mag >= cut.value if all_equal else mag > cut.value
        if first_equal is not None:
            keep.view(-1)[first_equal] = True
        del mag
        out = torch.where(keep, x, 0.0)
    return out.div_(density) if rescale else out
