"""`evaluate_task` / `score_encoder`: the metrics on hand-made eval splits whose answers are known,
and the refusals (one line, UserError) for folders that cannot be scored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from taskloom.data.rows import write_rows
from taskloom.errors import UserError
from taskloom.specs import load_task
from taskloom.train.evaluate import evaluate_task, score_encoder


def write_task(folder: Path, task_type: str, train: list[dict], eval_: list[dict], labels=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_rows(folder / "train.jsonl", train)
    write_rows(folder / "eval.jsonl", eval_)
    doc = {"name": "t", "type": task_type, "description": "a test task", "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}
    if labels:
        doc["labels"] = labels
    (folder / "task.yaml").write_text(yaml.safe_dump(doc))
    return folder / "task.yaml"


@pytest.fixture(scope="module")
def encoder():
    from taskloom.models.encoder import cached_encoder

    return cached_encoder("minilm")


QA = [
    {"query": "What is the capital of France?", "positive": "Paris is the capital of France."},
    {"query": "How many legs does a spider have?", "positive": "A spider has eight legs."},
    {"query": "Who wrote Hamlet?", "positive": "Hamlet was written by William Shakespeare."},
    {"query": "What do bees make?", "positive": "Bees make honey.", "negatives": ["Cows give milk."]},
]


def test_retrieval_mrr_over_the_pool_of_positives_and_negatives(tmp_path, encoder):
    from taskloom.models.encoder import embed_texts

    task = load_task(write_task(tmp_path, "retrieval", QA, QA))
    r = score_encoder(task, *encoder)
    assert r["metric"] == "mrr" and r["n"] == 4 and r["pool"] == 5
    assert r["value"] == 1.0 and r["recall_at_1"] == 1.0  # easy pairs: every answer ranks first
    # swap two answers: those two queries now find their (wrong) gold answer lower: MRR computed by hand
    swapped = [dict(QA[0], positive=QA[1]["positive"]), dict(QA[1], positive=QA[0]["positive"])] + QA[2:]
    tok, model = encoder
    pool = [q["positive"] for q in QA] + ["Cows give milk."]
    sims = embed_texts([q["query"] for q in QA], model=model, tok=tok) @ embed_texts(pool, model=model, tok=tok).T
    ranks = [1 + int((sims[i] > sims[i, [1, 0, 2, 3][i]]).sum()) for i in range(4)]
    assert score_encoder(task, tok, model, rows=swapped)["value"] == pytest.approx(np.mean([1 / k for k in ranks]))
    assert ranks[0] > 1 and ranks[1] > 1


def test_pair_similarity_pearson_follows_gold_scores(tmp_path, encoder):
    pairs = [
        {"text_a": "A man is playing a guitar.", "text_b": "A man plays the guitar.", "score": 0.95},
        {"text_a": "A woman is slicing onions.", "text_b": "Someone is cutting an onion.", "score": 0.8},
        {"text_a": "The cat sleeps on the sofa.", "text_b": "A dog runs in the park.", "score": 0.15},
        {"text_a": "Stocks fell sharply today.", "text_b": "A child is eating ice cream.", "score": 0.0},
    ]
    task = load_task(write_task(tmp_path, "pair_similarity", pairs, pairs))
    r = score_encoder(task, *encoder)
    assert r["metric"] == "pearson" and r["value"] > 0.9 and r["spearman"] == pytest.approx(1.0)
    reversed_ = [dict(p, score=1 - p["score"]) for p in pairs]
    assert score_encoder(task, *encoder, rows=reversed_)["value"] < -0.9


def test_classification_without_a_head_fits_the_probe_on_the_train_split(tmp_path):
    from taskloom.tasks.catalog import build_task

    spec, train, eval_ = build_task("chatterbot-topic")
    task = load_task(write_task(tmp_path, "classification", train[:300], eval_[:100], labels=spec["labels"]))
    r = evaluate_task(task)
    assert r["source"] == "base:minilm" and r["n"] == 100
    assert r["value"] > 3 / len(spec["labels"])  # far above chance for ~{n} topics


def test_refusals_name_the_folder(tmp_path):
    rows = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    task = load_task(write_task(tmp_path / "task", "classification", rows, rows, labels=["pos", "neg"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not an adapter folder"):
        evaluate_task(task, adapter=tmp_path / "empty")
    with pytest.raises(UserError, match="no head for task 't'"):
        evaluate_task(task, model=tmp_path / "empty")
    with pytest.raises(UserError, match="not both"):
        evaluate_task(task, adapter=tmp_path / "empty", model=tmp_path / "empty")
    fake = tmp_path / "adapter"
    fake.mkdir()
    (fake / "adapter_config.json").write_text("{}")
    (fake / "task.json").write_text(json.dumps({"task": "x", "type": "retrieval", "base": "minilm"}))
    with pytest.raises(UserError, match="trained for a retrieval task"):
        evaluate_task(task, adapter=fake)
    gen = load_task(write_task(tmp_path / "gen", "generation", [{"prompt": "a", "response": "b"}], [{"prompt": "a", "response": "b"}]))
    with pytest.raises(UserError, match="not a causal language model"):
        evaluate_task(gen)


def test_encode_in_length_chunks_gives_one_padded_batch_numbers_and_gradients(encoder):
    """encode() runs a mixed-length batch as several chunks; values and gradients match one padded batch."""
    import copy

    import torch
    import torch.nn.functional as F

    from taskloom.models.chunks import by_length
    from taskloom.models.encoder import encode, mean_pool

    tok, model = encoder
    model = copy.deepcopy(model).train(False)
    short = ["ok", "fine film", "short one", "yes", "not bad", "meh"]
    texts = short * 3 + ["a much longer sentence that goes on about a film and its actors " * 3, "no way " * 20,
                         "the plot drags in the middle but the ending lands well"]
    assert len(by_length([len(tok(t)["input_ids"]) for t in texts])) > 1  # really chunked
    w = model.encoder.layer[0].attention.self.query.weight
    got = encode(model, tok, texts, max_length=64)
    got.sum().backward()
    grad, w.grad = w.grad.clone(), None
    batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    ref = F.normalize(mean_pool(model(**batch).last_hidden_state, batch["attention_mask"]), dim=-1)
    ref.sum().backward()
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(grad, w.grad, atol=1e-4)
