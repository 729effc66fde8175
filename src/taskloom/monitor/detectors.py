"""Drift detectors: a detector is a small object; the registry is a plain dict, one line each.

Every detector takes a reference and a current sample of embeddings (n × d, m × d) and returns a
calibrated p-value under "same distribution", so one alpha means the same thing for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Detector:
    name: str
    description: str
    run: Callable[..., dict]  # (reference, current, permutations, seed) -> {"statistic", "p_value", ...}

    def __call__(self, reference: np.ndarray, current: np.ndarray, permutations: int = 200, seed: int = 0) -> dict:
        return self.run(reference, current, permutations=permutations, seed=seed)


def _mmd(reference, current, permutations, seed):
    from taskloom.monitor.mmd import mmd_test

    return mmd_test(reference, current, permutations=permutations, seed=seed)


def _ks_pca(reference, current, permutations, seed):
    from taskloom.monitor.ks_pca import ks_pca_test

    return ks_pca_test(reference, current)


DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in [
        Detector("mmd", "MMD² with an RBF kernel (median bandwidth), permutation p-value", _mmd),
        Detector("ks_pca", "KS on the reference's top 10 principal components, Bonferroni", _ks_pca),
    ]
}
