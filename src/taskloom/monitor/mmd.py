"""Maximum Mean Discrepancy two-sample test on embeddings, with a calibrated permutation p-value.

Kernel: RBF k(a, b) = exp(-|a-b|² / (2σ²)), σ from the median heuristic on the pooled sample
(σ² = median of the pooled pairwise squared distances / 2, so k = exp(-|a-b|² / median)).
Statistic: the unbiased MMD² (Gretton et al., 2012, eq. 3), diagonal terms left out.
p-value: p = (1 + #{permuted MMD² >= observed}) / (1 + B), never 0 (Phipson & Smyth, 2010).

Why it is fast: the pooled kernel matrix K is computed once; a permutation only relabels which
rows are "reference". With a the 0/1 indicator of the reference rows, every block sum of K is a
quadratic form in a (aᵀKa, aᵀK1, 1ᵀK1), so B permutations cost one matrix product K @ A with
A = [a₁ … a_B] (N × B, in chunks), in float64 so that ties and small statistics stay exact enough.

    python -c "import numpy as np; from taskloom.monitor.mmd import mmd_test; \
r=np.random.default_rng(0); print(mmd_test(r.normal(size=(500,384)), r.normal(.1,1,(500,384))))"
"""

from __future__ import annotations

import numpy as np

_CHUNK = 256  # permutations per matrix product: bounds memory at N × 256 float64


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


def mmd_test(x, y, permutations: int = 200, seed: int = 0) -> dict:
    """Two-sample MMD test of x (n × d) against y (m × d).

    Returns {"statistic": unbiased MMD², "p_value": (1+#)/(1+B), "bandwidth": σ, "permutations": B}.
    Expects validated input (finite, same d, n, m >= 2); `drift_embeddings` checks that for users.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("mmd_test needs at least 2 rows per sample")
    if permutations < 1:
        raise ValueError("mmd_test needs permutations >= 1")
    z = np.concatenate([x, y], axis=0)
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
