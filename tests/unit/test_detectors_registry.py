"""The detectors beyond MMD: BH-corrected KS, the classifier two-sample test, chi-squared on predicted labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import chi2_contingency, ks_2samp

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.monitor.chi2_labels import chi2_labels_test
from taskloom.monitor.classifier import classifier_test
from taskloom.monitor.detectors import DETECTORS
from taskloom.monitor.drift import drift_embeddings
from taskloom.monitor.ks_pca import ks_pca_test
from taskloom.monitor.multitest import bh_adjust


def test_registry_has_one_entry_per_detector_with_an_effect_size():
    assert list(DETECTORS) == ["mmd", "ks_pca", "ks_pca_bh", "classifier", "chi2", "bbsd"]
    inputs = {n: d.inputs for n, d in DETECTORS.items()}
    assert (inputs["chi2"], inputs["bbsd"]) == ("labels", "probs")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 8)), rng.normal(loc=0.8, size=(60, 8))

    def softmax(z):
        return np.exp(z) / np.exp(z).sum(1, keepdims=True)

    for name, det in DETECTORS.items():
        assert det.effect and det.min_effect > 0, name
        a, b = {"labels": (x.argmax(1), y.argmax(1)), "probs": (softmax(x), softmax(y))}.get(det.inputs, (x, y))
        out = det(a, b, permutations=99, seed=0)
        assert 0 < out["p_value"] <= 1 and np.isfinite(out["effect"]), name


def test_bh_adjust_by_hand():
    q = bh_adjust([0.01, 0.04, 0.03, 0.2])
    # sorted .01 .03 .04 .2 → k·p/i = .04 .06 .0533 .2 → running min from the right: .04 .0533 .0533 .2
    assert q == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert bh_adjust([0.5, 0.9]).tolist() == [0.9, 0.9]
    assert bh_adjust([]).size == 0


def test_ks_pca_bh_is_simes_and_never_above_bonferroni():
    rng = np.random.default_rng(1)
    for seed in range(5):
        x = rng.normal(size=(80, 12))
        y = rng.normal(size=(70, 12)) + np.r_[np.full(3, 0.3 * seed), np.zeros(9)]
        bonf, bh = ks_pca_test(x, y, components=6), ks_pca_test(x, y, components=6, correction="bh")
        assert bh["p_value"] <= bonf["p_value"] + 1e-15
        z = np.concatenate([x, y])
        mean = z.mean(0)
        vt = np.linalg.svd(z - mean, full_matrices=False)[2][:6]  # the pooled sample's principal directions
        p = np.sort([ks_2samp((x - mean) @ v, (y - mean) @ v).pvalue for v in vt])
        assert bh["p_value"] == pytest.approx(min(6 * p[i] / (i + 1) for i in range(6)))
        assert bonf["p_value"] == pytest.approx(min(1.0, 6 * p[0]))
        assert bh["effect"] == bh["statistic"] == bonf["effect"]
    with pytest.raises(ValueError, match="correction"):
        ks_pca_test(x, y, correction="holm")


def test_ks_pca_stays_calibrated_when_dimensions_outnumber_rows():
    """Directions fitted to the reference alone overfit it: with d = 200 > n = 150 that version flagged
    30 of these 30 no-drift windows. Pooled directions keep KS exact."""
    rng = np.random.default_rng(0)
    for correction in ("bonferroni", "bh"):
        alarms = sum(ks_pca_test(rng.normal(size=(150, 200)), rng.normal(size=(150, 200)), correction=correction)["p_value"]
                     < 0.05 for _ in range(30))
        assert alarms <= 5, correction  # P(Binomial(30, 0.05) >= 6) = 0.016


def test_classifier_auc_is_the_held_out_auc_and_the_test_is_calibrated():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(100, 10)), rng.normal(loc=0.35, size=(120, 10))
    out = classifier_test(x, y, seed=3)
    assert out["n_holdout"] == 110
    assert out["effect"] == pytest.approx(out["statistic"] - 0.5)
    assert out["statistic"] > 0.7 and out["p_value"] < 1e-4
    # the same split and model by hand: AUC = U / (n₁ n₂)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from taskloom.monitor.classifier import C

    z, lab = np.concatenate([x, y]), np.r_[np.zeros(100, int), np.ones(120, int)]
    zf, zt, lf, lt = train_test_split(z, lab, test_size=0.5, stratify=lab, random_state=3)
    s = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(zf, lf).decision_function(zt)
    assert out["statistic"] == pytest.approx(roc_auc_score(lt, s))

    pvals = [classifier_test(rng.normal(size=(60, 10)), rng.normal(size=(60, 10)), seed=s)["p_value"] for s in range(30)]
    assert sum(p < 0.05 for p in pvals) <= 5  # P(Binomial(30, 0.05) >= 6) = 0.016
    assert 0.3 < float(np.mean(pvals)) < 0.7


def test_chi2_on_labels_and_on_probabilities_agree_with_scipy():
    ref = ["fresh"] * 60 + ["rotten"] * 40
    cur = ["fresh"] * 35 + ["rotten"] * 65
    out = chi2_labels_test(ref, cur)
    table = np.array([[60, 40], [35, 65]])
    res = chi2_contingency(table, correction=False)
    assert out["statistic"] == pytest.approx(res.statistic) and out["p_value"] == pytest.approx(res.pvalue)
    assert out["effect"] == pytest.approx(np.sqrt(res.statistic / 200))  # Cramér's V, two rows
    assert out["counts"] == {"reference": [60, 40], "current": [35, 65]} and out["exact"] is False
    eye = np.eye(2)
    probs = chi2_labels_test(eye[[0] * 60 + [1] * 40] * 0.8 + 0.1, eye[[0] * 35 + [1] * 65] * 0.8 + 0.1)
    assert probs["p_value"] == pytest.approx(out["p_value"])
    same = chi2_labels_test(["a"] * 30, ["a"] * 20)
    assert (same["p_value"], same["effect"]) == (1.0, 0.0)


def test_chi2_uses_a_permutation_p_value_when_counts_are_small():
    out = chi2_labels_test(["a"] * 9 + ["b"], ["a"] * 3 + ["b"] * 7, permutations=99, seed=1)
    assert out["exact"] is True
    assert out["p_value"] in {(1 + k) / 100 for k in range(100)}
    assert out["p_value"] < 0.05


def test_drift_embeddings_takes_labels_for_chi2_and_rejects_mixed_inputs():
    labels = np.array(list("ab") * 10)
    out = drift_embeddings(labels, np.array(["a"] * 18 + ["b"] * 2), method="chi2")
    assert out["drift"] is True and out["effect"] == pytest.approx(np.sqrt(40 * 160**2 / (20 * 20 * 28 * 12) / 40))
    with pytest.raises(UserError, match="current: gives class probabilities but reference gives labels"):
        drift_embeddings(labels, np.full((20, 2), 0.5), method="chi2")
    with pytest.raises(UserError, match="current: 3 classes differ from reference's 2"):
        drift_embeddings(np.full((20, 2), 0.5), np.full((20, 3), 0.3), method="chi2")
    with pytest.raises(UserError, match="labels must be strings or integers"):
        drift_embeddings(np.zeros(20), np.zeros(20), method="chi2")


def test_cli_chi2_on_a_label_field(tmp_path, capsys):
    ref, cur = tmp_path / "ref.jsonl", tmp_path / "cur.jsonl"
    ref.write_text("".join(json.dumps({"text": "x", "label": lab}) + "\n" for lab in ["fresh", "rotten"] * 25))
    cur.write_text("".join(json.dumps({"text": "x", "label": lab}) + "\n" for lab in ["fresh"] * 45 + ["rotten"] * 5))
    assert main(["drift", "--reference", str(ref), "--current", str(cur), "--method", "chi2", "--field", "label"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "chi2" and out["drift"] is True and out["field"] == "label"
    assert out["categories"] == ["fresh", "rotten"] and out["counts"]["current"] == [45, 5]
