"""Multiple-testing correction: Benjamini-Hochberg adjusted p-values (q-values).

Used twice: across the principal components of one KS test (Simes' global p = min q), and across
the tasks tested in one window (alarm when q <= alpha: the expected share of false alarms among the
tasks flagged in a window stays at most alpha for independent or positively dependent tests).
"""

from __future__ import annotations

import numpy as np


def bh_adjust(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values in the input order: q₍ᵢ₎ = min over j >= i of k·p₍ⱼ₎/j, at most 1."""
    p = np.asarray(p_values, dtype=np.float64)
    k = len(p)
    if k == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * k / np.arange(1, k + 1)
    q_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    q = np.empty(k)
    q[order] = np.minimum(q_sorted, 1.0)
    return q
