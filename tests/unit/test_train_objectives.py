"""The training objectives, batching and classification head, on small tensors with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from taskloom.errors import UserError
from taskloom.models.chunks import by_length, padded_slots
from taskloom.models.heads import align_head, fit_probe, load_head, save_head
from taskloom.train.objectives import classification_loss, cosent_loss, info_nce_loss


def test_cosent_is_small_when_cosines_follow_the_scores_and_large_when_reversed():
    scores = torch.tensor([0.1, 0.5, 0.9])
    right = cosent_loss(torch.tensor([0.0, 0.4, 0.8]), scores)
    wrong = cosent_loss(torch.tensor([0.8, 0.4, 0.0]), scores)
    # right: log(1 + e^-8 + e^-8 + e^-16); wrong: log(1 + e^8 + e^8 + e^16)
    assert right.item() == pytest.approx(math.log(1 + 2 * math.exp(-8) + math.exp(-16)), rel=1e-4)
    assert wrong.item() == pytest.approx(math.log(1 + 2 * math.exp(8) + math.exp(16)), rel=1e-5)


def test_cosent_ignores_ties_in_the_gold_scores():
    assert cosent_loss(torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])).item() == pytest.approx(0.0, abs=1e-7)


def test_info_nce_matches_cross_entropy_written_by_hand():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    positives = torch.tensor([2, 0, 4])
    logits = q @ d.T / 0.05
    expected = -np.mean([logits[i, positives[i]].item() - torch.logsumexp(logits[i], 0).item() for i in range(3)])
    assert info_nce_loss(q, d, positives).item() == pytest.approx(expected, rel=1e-5)
    # a perfect match (documents equal to their queries) at a low temperature costs almost nothing
    assert info_nce_loss(q, q, torch.arange(3), temperature=0.01).item() < info_nce_loss(q, d, positives).item()


def test_classification_loss_is_log_n_for_uniform_logits():
    assert classification_loss(torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])).item() == pytest.approx(math.log(3))


def test_chunks_cover_every_row_once_and_pad_far_less_than_one_padded_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=64).tolist()
    chunks = by_length(lengths)
    assert sorted(i for c in chunks for i in c) == list(range(64))
    assert padded_slots(lengths) < 0.8 * len(lengths) * max(lengths)  # one padded batch of 64
    assert padded_slots([7] * 64) == 7 * 64  # equal lengths: one chunk, no padding


def test_head_round_trip_and_label_reordering(tmp_path):
    head = torch.nn.Linear(4, 3)
    save_head(tmp_path, head, ["a", "b", "c"])
    loaded, labels = load_head(tmp_path)
    assert labels == ["a", "b", "c"]
    assert torch.equal(loaded.weight, head.weight) and torch.equal(loaded.bias, head.bias)
    reordered = align_head(loaded, labels, ["c", "a", "b"], "head.json")
    assert torch.equal(reordered.weight[0], head.weight[2]) and reordered.bias[1] == head.bias[0]
    with pytest.raises(UserError, match="do not match"):
        align_head(loaded, labels, ["a", "b", "z"], "head.json")


def test_corrupted_head_is_refused(tmp_path):
    save_head(tmp_path, torch.nn.Linear(4, 2), ["x", "y"])
    data = bytearray((tmp_path / "head.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "head.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match="sha256"):
        load_head(tmp_path)


def test_probe_separates_separable_classes_and_beats_chance_on_noisy_ones():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    y = rng.integers(0, 3, size=300)
    x = centers[y] + rng.normal(scale=0.3, size=(300, 16))
    head = fit_probe(x, y, 3)
    pred = head(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
    assert (pred == y).mean() == 1.0
    noisy = centers[y] + rng.normal(scale=3.0, size=(300, 16))
    acc = (fit_probe(noisy[:200], y[:200], 3)(torch.as_tensor(noisy[200:], dtype=torch.float32)).argmax(1).numpy() == y[200:]).mean()
    assert 0.45 < acc < 1.0
