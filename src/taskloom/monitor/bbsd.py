"""Black-box shift detection (Lipton et al., 2018): test what the served head answers, not what it reads.

A change in the mix of labels (70 % positive reviews where there were 50 %) leaves the texts of each
class as they were, so a test on input embeddings barely sees it; the served head's class
probabilities move with the mix. Per class: Welch's t-test on P(class), reference vs current, and
Bonferroni over the classes tested (one for two classes: the other column is its complement).
Effect: the largest difference of mean probabilities, 0 to 1.
"""

from __future__ import annotations

import numpy as np

from taskloom.errors import UserError


def bbsd_test(reference, current) -> dict:
    """{"statistic": largest |t|, "p_value", "effect", "n_reference", "n_current", "classes"} for two
    arrays of class probabilities (rows × classes, the same classes in the same order)."""
    from scipy.stats import ttest_ind

    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1] or ref.shape[1] < 2:
        raise UserError(
            f"bbsd needs class probabilities (rows × the same >= 2 classes), got {ref.shape} and {cur.shape}"
        )
    cols = ref.shape[1] if ref.shape[1] > 2 else 1
    diff = np.abs(ref[:, :cols].mean(0) - cur[:, :cols].mean(0))
    t, p = ttest_ind(ref[:, :cols], cur[:, :cols], axis=0, equal_var=False)
    # a column constant on both sides (a head that never moves) has no t: it is no evidence of a shift
    t, p = np.nan_to_num(np.abs(t), nan=0.0), np.nan_to_num(p, nan=1.0)
    return {
        "statistic": float(t.max()),
        "p_value": float(min(1.0, p.min() * cols)),
        "effect": float(diff.max()),
        "n_reference": len(ref),
        "n_current": len(cur),
        "classes": int(ref.shape[1]),
    }
