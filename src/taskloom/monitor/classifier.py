"""Classifier two-sample test: can a logistic regression tell the current sample from the reference?

Pool both samples with labels 0 (reference) and 1 (current), split them once into a training and a
held-out fold (stratified, seeded), fit a logistic regression on the training fold and score the
held-out fold. Under "same distribution" the held-out rows are exchangeable with respect to the
fitted model, so the one-sided Mann-Whitney U test of "current rows score higher" is exact (up to
the normal approximation scipy uses for large samples), and U / (n₁·n₂) is the out-of-fold AUC.

Why one held-out fold and not K-fold cross-fitting: the K folds' AUCs share training data, so
their joint null distribution is unknown and a Mann-Whitney p-value on pooled out-of-fold scores
is not guaranteed to be valid; a permutation test would refit the model B·K times. One held-out
fold gives a calibrated p-value for the price of one fit (Lopez-Paz & Oquab, 2017).

Effect size: AUC − 0.5 on the held-out fold (0 = indistinguishable, 0.5 = perfectly separated).
"""

from __future__ import annotations

import numpy as np

C = 0.05  # L2 strength of the logistic regression on standardised embeddings (chosen for power, any fixed value is valid)


def classifier_test(x, y, seed: int = 0, holdout: float = 0.5) -> dict:
    """{"statistic": held-out AUC, "p_value": one-sided Mann-Whitney, "effect": AUC − 0.5, "n_holdout"}."""
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    z = np.concatenate([x, y])
    labels = np.r_[np.zeros(len(x), dtype=int), np.ones(len(y), dtype=int)]
    z_fit, z_test, l_fit, l_test = train_test_split(z, labels, test_size=holdout, stratify=labels, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
    model.fit(z_fit, l_fit)
    scores = model.decision_function(z_test)
    cur, ref = scores[l_test == 1], scores[l_test == 0]
    u = mannwhitneyu(cur, ref, alternative="greater")
    auc = float(u.statistic) / (len(cur) * len(ref))
    return {"statistic": auc, "p_value": float(u.pvalue), "effect": auc - 0.5, "n_holdout": len(l_test)}
