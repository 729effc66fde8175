"""Chi-squared test on the distribution of predicted labels (what the served classifier answers).

Input per side: a sequence of labels (strings or integers), or an (n × k) array of class
probabilities or logits, turned into labels by argmax. The two label counts form a 2 × c
contingency table (categories seen on neither side dropped); Pearson's chi-squared test of
homogeneity gives the p-value, without Yates' correction (it makes 2 × 2 tables conservative).
When an expected count is below 5 the chi-squared approximation is poor, so the p-value comes from
a permutation test of the same statistic instead ((1 + #) / (1 + B), scipy's PermutationMethod).

Effect size: Cramér's V = sqrt(χ² / N) for two rows (0 = same proportions, 1 = disjoint labels).
"""

from __future__ import annotations

import numpy as np


def as_labels(values, name: str = "labels") -> np.ndarray:
    """1-D labels as strings; a 2-D array of probabilities (or logits) becomes its argmax per row."""
    arr = np.asarray(values)
    if arr.ndim == 2:
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name}: a 2-D array must hold class probabilities, got dtype {arr.dtype}")
        return np.argmax(arr, axis=1).astype(str)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a list of labels or an (n × classes) array, got shape {arr.shape}")
    return arr.astype(str)


def chi2_labels_test(x, y, permutations: int = 200, seed: int = 0) -> dict:
    """{"statistic": χ², "p_value", "effect": Cramér's V, "categories": [...], "counts": {"reference", "current"}}."""
    from scipy.stats import PermutationMethod, chi2_contingency

    a, b = as_labels(x, "reference"), as_labels(y, "current")
    cats = sorted(set(a.tolist()) | set(b.tolist()))
    table = np.array([[int(np.sum(a == c)) for c in cats], [int(np.sum(b == c)) for c in cats]])
    counts = {"reference": table[0].tolist(), "current": table[1].tolist()}
    if len(cats) < 2:  # one label on both sides: the proportions are equal by construction
        return {"statistic": 0.0, "p_value": 1.0, "effect": 0.0, "categories": cats, "counts": counts}
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    method = None
    if expected.min() < 5:
        method = PermutationMethod(n_resamples=permutations, rng=np.random.default_rng(seed))
    res = chi2_contingency(table, correction=False, method=method)
    stat = float(res.statistic)
    return {
        "statistic": stat,
        "p_value": float(res.pvalue),
        "effect": float(np.sqrt(stat / table.sum())),
        "categories": cats,
        "counts": counts,
        "exact": method is not None,
    }
