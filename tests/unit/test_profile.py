"""Task profiles: label entropy, lengths, and MiniLM reference embeddings (real encoder, small samples)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taskloom.data.profile import label_entropy, profile_task
from taskloom.tasks.catalog import build_task


def test_label_entropy_in_bits():
    assert label_entropy(["a", "a", "b", "b"]) == pytest.approx(1.0)
    assert label_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert label_entropy(["a", "a", "a", "b"]) == pytest.approx(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)))
    assert label_entropy(["a"] * 5) == 0.0
    assert label_entropy([]) == 0.0


def test_profile_of_a_classification_task():
    spec, train, _eval = build_task("chatterbot-topic")
    rows = train[:60]
    prof = profile_task(spec, rows, sample=24)
    assert prof["task_id"] == "chatterbot-topic" and prof["type"] == "classification" and prof["rows"] == 60
    counts = np.unique([r["label"] for r in rows], return_counts=True)[1] / 60
    assert prof["label_entropy"] == pytest.approx(float(-(counts * np.log2(counts)).sum()))
    assert 2.0 < prof["label_entropy"] <= math.log2(len(spec["labels"]))
    assert prof["mean_length"] == pytest.approx(np.mean([len(r["text"]) for r in rows]))

    ref = prof["reference"]
    assert isinstance(ref, np.ndarray) and ref.shape == (24, 384) and ref.dtype == np.float32
    assert np.allclose(np.linalg.norm(ref, axis=1), 1.0, atol=1e-4)
    centroid = np.asarray(prof["centroid"])
    assert isinstance(prof["centroid"], list) and len(prof["centroid"]) == 384
    assert np.allclose(centroid, ref.mean(axis=0), atol=1e-6)
    assert 0.15 < np.linalg.norm(centroid) < 0.9  # varied texts: neither identical nor unrelated

    again = profile_task(spec, rows, sample=24)
    assert np.array_equal(again["reference"], ref)  # seeded sample, deterministic encoder


def test_profile_of_a_pair_task_uses_distinct_text_a():
    spec, train, _eval = build_task("lee-similarity")
    prof = profile_task(spec, train[:40])
    assert prof["label_entropy"] == 0.0 and prof["rows"] == 40
    distinct = len({r["text_a"] for r in train[:40]})
    assert prof["reference"].shape == (distinct, 384)
