"""Kolmogorov-Smirnov tests on the reference's top principal components, Bonferroni-corrected.

A cheap second opinion to MMD: project both samples on the k leading principal directions of
the reference (where it varies most), run one two-sample KS test per direction, and report
p = min(1, k · min pᵢ), a valid p-value for "no component shifted" whatever their dependence.
"""

from __future__ import annotations

import numpy as np


def ks_pca_test(x, y, components: int = 10) -> dict:
    """{"statistic": the largest KS distance, "p_value": Bonferroni-corrected, "components": k}."""
    from scipy.stats import ks_2samp

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = max(1, min(components, vt.shape[0], x.shape[1]))
    px, py = (x - mean) @ vt[:k].T, (y - mean) @ vt[:k].T
    stats, pvals = zip(*(ks_2samp(px[:, i], py[:, i]) for i in range(k)))
    return {
        "statistic": float(max(stats)),
        "p_value": float(min(1.0, k * min(pvals))),
        "components": int(k),
    }
