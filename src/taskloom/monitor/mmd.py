"""Maximum Mean Discrepancy two-sample test on embeddings, with a calibrated permutation p-value.

Kernel: RBF k(a, b) = exp(-|a-b|² / (2σ²)), σ from the median heuristic on the pooled sample
(σ² = median of the pooled pairwise squared distances / 2, so k = exp(-|a-b|² / median)).
Statistic: the unbiased MMD² (Gretton et al., 2012, eq. 3), diagonal terms left out.
p-value: p = (1 + #{permuted MMD² >= observed}) / (1 + B), never 0 (Phipson & Smyth, 2010).

Why it is fast: the pooled kernel matrix K is computed once; a permutation only relabels which
rows are "reference". With a the 0/1 indicator of the reference rows, every block sum of K is a
quadratic form in a (aᵀKa, aᵀK1, 1ᵀK1), so B permutations cost one matrix product K @ A with
A = [a₁ … a_B] (N × B, in chunks). The median heuristic's median comes from a selection inside a
bracket found on a strided sample, not from partitioning all N² distances.

Precision: float32 by default (torch): distances, K and K @ A in float32, every other sum in
float64. The observed statistic is summed from K in float64, and a permuted statistic that lands
within u·sqrt(N) of it (u = 2⁻²⁴; about 25 times the float32 accumulation error measured on MiniLM
windows) is summed again the same way before it is compared, so rounding cannot flip a count.
`precision="float64"` is the numpy path with everything in float64 (tests compare it with a
pair-by-pair loop; bench/drift_vs_alibi.py compares both with a float32 torch reference).

    python -c "import numpy as np; from taskloom.monitor.mmd import mmd_test; \
r=np.random.default_rng(0); print(mmd_test(r.normal(size=(500,384)), r.normal(.1,1,(500,384))))"
"""

from __future__ import annotations

import numpy as np

_CHUNK = 256  # permutations per matrix product: bounds memory at N × 256 numbers


def permutation_indices(n_total: int, permutations: int, seed: int = 0) -> np.ndarray:
    """(B, N) int array: row b is the b-th random ordering of the pooled sample (seeded).

    The first n entries of a row are the permuted "reference" rows. Public so that a slow
    reference implementation can replay exactly the same permutations.
    """
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n_total), (permutations, 1)), axis=1)


def pairwise_sq_dists(z: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between all rows of z (float64, clipped at 0, zero diagonal)."""
    sq = np.einsum("ij,ij->i", z, z)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def median_bandwidth(d2: np.ndarray) -> float:
    """σ of the median heuristic: σ² = median over distinct pairs of |a-b|², halved."""
    n = d2.shape[0]
    # The off-diagonal entries as an (n-1) × n view (every pair twice: the median is the same).
    off = d2.reshape(-1)[1:].reshape(n - 1, n + 1)[:, :-1]
    med = float(np.median(off))
    if med <= 0.0:  # more than half the pairs identical: fall back to the mean of the non-zero ones
        nz = off[off > 0]
        med = float(nz.mean()) if nz.size else 1.0
    return float(np.sqrt(med / 2.0))


def rbf_kernel(d2: np.ndarray, bandwidth: float, out: np.ndarray | None = None) -> np.ndarray:
    """exp(-d² / 2σ²); with out=d2 in place (the pooled matrix is the largest array of the test)."""
    out = np.multiply(d2, -1.0 / (2.0 * bandwidth * bandwidth), out=out)
    return np.exp(out, out=out)


def mmd2_from_indicators(k: np.ndarray, a: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD² for each column of the 0/1 indicator matrix a (N × C), from the pooled K.

    sum_XX = aᵀKa, sum_XY = aᵀK1 - aᵀKa, sum_YY = 1ᵀK1 - 2aᵀK1 + aᵀKa, minus diagonals.
    """
    diag = np.diag(k)
    row = k.sum(axis=1)
    total = row.sum()
    ka = k @ a
    xx = np.einsum("ic,ic->c", a, ka)  # aᵀKa
    xr = row @ a  # aᵀK1
    xd = diag @ a  # reference part of the diagonal
    yd = diag.sum() - xd
    s_xx = xx - xd
    s_yy = total - 2.0 * xr + xx - yd
    s_xy = xr - xx
    return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)


PRECISIONS = ("float32", "float64")
_SAMPLE_STEP = 47  # the median's bracketing sample: every 47th entry of the pooled distance matrix
_ULP32 = 2.0**-24  # float32 unit roundoff


def order_statistics(flat: np.ndarray, ranks: tuple[int, ...]) -> list[float]:
    """The k-th smallest entries (0-based ranks) of a 1-D array, exact, without a full partition.

    A strided sample brackets each rank; only the entries inside the bracket (a few per cent) are
    partitioned. When a bracket misses (it should not: 5 standard deviations of the sample
    quantile), the whole array is partitioned instead.
    """
    total = flat.size
    sample = np.sort(flat[::_SAMPLE_STEP])
    s = sample.size
    out = []
    for k in ranks:
        if s >= 1000:
            q = (k + 0.5) / total
            margin = 5.0 * (q * (1 - q) / s) ** 0.5 + 2.0 / s
            lo = sample[max(0, int((q - margin) * s))]
            hi = sample[min(s - 1, int((q + margin) * s))]
            below = int(np.count_nonzero(flat < lo))
            inside = flat[(flat >= lo) & (flat <= hi)]
            if below <= k < below + inside.size:
                out.append(float(np.partition(inside, k - below)[k - below]))
                continue
        out.append(float(np.partition(flat, k)[k]))
    return out


def _mmd_test_float32(z: np.ndarray, n: int, permutations: int, seed: int) -> tuple[float, float, int]:
    """(observed MMD², bandwidth, #permuted >= observed): K and K @ A in float32 (torch), sums in float64.

    A permuted statistic within float32 rounding of the observed one is recomputed from K with
    float64 sums before it is compared, so float32 accumulation cannot flip a count.
    """
    import torch

    n_total = len(z)
    m = n_total - n
    zt = torch.from_numpy(np.ascontiguousarray(z - z.mean(axis=0), dtype=np.float32))  # centred: fewer cancellations
    sq = (zt * zt).sum(dim=1)
    k = zt @ zt.T
    k.mul_(-2.0).add_(sq[:, None]).add_(sq[None, :]).clamp_(min=0.0)  # |a-b|² = |a|² + |b|² - 2ab
    k.fill_diagonal_(0.0)
    kn = k.numpy()  # the same memory
    # median over distinct pairs: each pair is twice in k and the N zeros of the diagonal sort first,
    # so the p-th smallest pair distance is entry N + 2p - 2 (0-based) of the sorted k
    pairs = n_total * (n_total - 1) // 2
    ranks = (n_total + pairs - 1,) if pairs % 2 else (n_total + pairs - 2, n_total + pairs)
    med = float(np.mean(order_statistics(kn.reshape(-1), ranks)))
    if med <= 0.0:  # more than half the pairs identical: the mean of the non-zero ones
        nz = kn[kn > 0]
        med = float(nz.mean(dtype=np.float64)) if nz.size else 1.0
    bandwidth = float(np.sqrt(med / 2.0))
    k.mul_(-1.0 / (2.0 * bandwidth * bandwidth)).exp_()
    diag = np.diag(kn).astype(np.float64)
    row = kn.sum(axis=1, dtype=np.float64)
    total, diag_total = float(row.sum()), float(diag.sum())

    def stat(xx, xr, xd):
        s_xx, s_yy, s_xy = xx - xd, total - 2.0 * xr + xx - (diag_total - xd), xr - xx
        return s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)

    def exact(rows: np.ndarray) -> float:  # float64 sums over K's block, no float32 accumulation
        return float(stat(kn[np.ix_(rows, rows)].sum(dtype=np.float64), row[rows].sum(), diag[rows].sum()))

    observed = exact(np.arange(n))
    tol = _ULP32 * np.sqrt(n_total) * float(np.abs(kn).max())  # float32 accumulation error, with margin
    perms = permutation_indices(n_total, permutations, seed)
    exceed = 0
    for start in range(0, permutations, _CHUNK):
        block = perms[start : start + _CHUNK, :n]  # (C, n): the rows labelled "reference"
        a = np.zeros((n_total, len(block)), dtype=np.float32)
        a[block.T, np.arange(len(block))[None, :]] = 1.0
        at = torch.from_numpy(a)
        xx = (at * (k @ at)).sum(dim=0, dtype=torch.float64).numpy()  # aᵀKa
        a64 = a.astype(np.float64)
        stats = stat(xx, row @ a64, diag @ a64)
        close = np.abs(stats - observed) <= tol
        exceed += int(np.count_nonzero(stats[~close] >= observed))
        exceed += sum(exact(block[c]) >= observed for c in np.flatnonzero(close))
    return observed, bandwidth, exceed


def mmd_test(x, y, permutations: int = 200, seed: int = 0, precision: str = "float32") -> dict:
    """Two-sample MMD test of x (n × d) against y (m × d).

    Returns {"statistic": unbiased MMD², "p_value": (1+#)/(1+B), "bandwidth": σ, "permutations": B}.
    Expects validated input (finite, same d, n, m >= 2); `drift_embeddings` checks that for users.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("mmd_test needs at least 2 rows per sample")
    if permutations < 1:
        raise ValueError("mmd_test needs permutations >= 1")
    z = np.concatenate([x, y], axis=0)
    if precision == "float32":
        observed, bandwidth, exceed = _mmd_test_float32(z, n, permutations, seed)
        return {
            "statistic": observed,
            "p_value": (1 + exceed) / (1 + permutations),
            "bandwidth": bandwidth,
            "permutations": int(permutations),
        }
    d2 = pairwise_sq_dists(z)
    bandwidth = median_bandwidth(d2)
    k = rbf_kernel(d2, bandwidth, out=d2)
    n_total = n + m

    observed_a = np.zeros((n_total, 1))
    observed_a[:n, 0] = 1.0
    observed = float(mmd2_from_indicators(k, observed_a, n, m)[0])

    perms = permutation_indices(n_total, permutations, seed)
    exceed = 0
    for start in range(0, permutations, _CHUNK):
        block = perms[start : start + _CHUNK, :n]  # (C, n): the rows labelled "reference"
        a = np.zeros((n_total, len(block)))
        a[block.T, np.arange(len(block))[None, :]] = 1.0
        stats = mmd2_from_indicators(k, a, n, m)
        exceed += int(np.count_nonzero(stats >= observed))
    return {
        "statistic": observed,
        "p_value": (1 + exceed) / (1 + permutations),
        "bandwidth": bandwidth,
        "permutations": int(permutations),
    }
