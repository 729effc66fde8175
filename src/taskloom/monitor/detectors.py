"""Drift detectors: a detector is a small object; the registry is a plain dict, one line each.

Every detector takes a reference and a current sample (embeddings n × d and m × d, for a "labels"
detector two lists of predicted labels / arrays of class probabilities, for a "probs" detector two
arrays of class probabilities) and returns a
calibrated p-value under "same distribution", so one alpha means the same thing for all of them,
and an effect size ("effect", 0 = no difference), so an alarm can also ask for a difference that
matters: with large windows a tiny, harmless shift is already significant.

A new detector is one file with a `Detector` object and one entry point in the `taskloom.detectors`
group (taskloom's own are listed in pyproject.toml the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from taskloom.monitor.bbsd import bbsd_test
from taskloom.monitor.chi2_labels import chi2_labels_test
from taskloom.monitor.classifier import classifier_test
from taskloom.monitor.ks_pca import ks_pca_test
from taskloom.monitor.mmd import mmd_test
from taskloom.plugins import Registry


@dataclass(frozen=True)
class Detector:
    name: str
    description: str
    run: Callable[..., dict]  # (reference, current, permutations, seed) -> {"statistic", "p_value", "effect", ...}
    effect: str = ""  # what "effect" measures
    min_effect: float = 0.0  # default smallest effect worth an alarm (see bench/drift_calibration.py)
    inputs: str = "embeddings"  # "embeddings" (n × d) | "labels" (labels or class probabilities) | "probs"

    def __call__(self, reference: np.ndarray, current: np.ndarray, permutations: int = 200, seed: int = 0) -> dict:
        return self.run(reference, current, permutations=permutations, seed=seed)


def _mmd(reference, current, permutations, seed):
    out = mmd_test(reference, current, permutations=permutations, seed=seed)
    return {**out, "effect": float(np.sqrt(max(out["statistic"], 0.0)))}


def _ks_pca(reference, current, permutations, seed):
    return ks_pca_test(reference, current, correction="bonferroni")


def _ks_pca_bh(reference, current, permutations, seed):
    return ks_pca_test(reference, current, correction="bh")


def _classifier(reference, current, permutations, seed):
    return classifier_test(reference, current, seed=seed)


def _chi2(reference, current, permutations, seed):
    return chi2_labels_test(reference, current, permutations=permutations, seed=seed)


def _bbsd(reference, current, permutations, seed):
    return bbsd_test(reference, current)


MMD = Detector(
    "mmd", "MMD² with an RBF kernel (median bandwidth), permutation p-value", _mmd, "MMD (sqrt of MMD²)", 0.03
)
KS_PCA = Detector(
    "ks_pca", "KS on the pooled sample's top 10 principal components, Bonferroni", _ks_pca, "largest KS D", 0.1
)
KS_PCA_BH = Detector(
    "ks_pca_bh",
    "KS on the pooled sample's top 10 principal components, Benjamini-Hochberg",
    _ks_pca_bh,
    "largest KS D",
    0.1,
)
CLASSIFIER = Detector(
    "classifier",
    "logistic regression told apart on a held-out fold, Mann-Whitney p-value",
    _classifier,
    "AUC - 0.5",
    0.03,
)
CHI2 = Detector(
    "chi2", "chi-squared on predicted labels (lists or argmax of probabilities)", _chi2, "Cramér's V", 0.05, "labels"
)
BBSD = Detector(
    "bbsd",
    "Welch's t-test per class on the served head's probabilities, Bonferroni (black-box shift detection)",
    _bbsd,
    "largest change of a mean class probability",
    0.05,
    "probs",
)

# name → detector: the ones above and every installed plugin's, through the `taskloom.detectors`
# entry points (pyproject.toml; see taskloom.plugins)
DETECTORS: Mapping[str, Detector] = Registry("taskloom.detectors", Detector, "drift detector")
