"""The built-in tasks: sizes, fixed seeded splits, no eval text in train, export round trip."""

from __future__ import annotations

from collections import Counter

import pytest

from taskloom.artifacts import verify_digest
from taskloom.cli import main
from taskloom.data.rows import load_rows
from taskloom.specs import load_task
from taskloom.tasks.catalog import TASK_NAMES, build_task, export_task


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


@pytest.fixture(scope="module")
def built():
    return {name: build_task(name) for name in TASK_NAMES}


def test_names_match_the_contract():
    assert TASK_NAMES == ["rt-sentiment", "chatterbot-topic", "chatterbot-qa", "lee-similarity", "chatterbot-gen"]


def test_sizes_and_types(built):
    spec, train, eval_ = built["rt-sentiment"]
    assert (spec["type"], spec["labels"], len(train), len(eval_)) == ("classification", ["fresh", "rotten"], 3000, 1000)
    assert Counter(r["label"] for r in train) == {"fresh": 1500, "rotten": 1500}
    assert Counter(r["label"] for r in eval_) == {"fresh": 500, "rotten": 500}

    spec, train, eval_ = built["chatterbot-topic"]
    assert spec["type"] == "classification"
    assert len(spec["labels"]) >= 8 and {"ai", "coding", "emotion", "trivia"} <= set(spec["labels"])
    assert 800 <= len(train) <= 1500 and 250 <= len(eval_) <= 500
    per_label = Counter(r["label"] for r in eval_)
    assert set(per_label) == set(spec["labels"]) and min(per_label.values()) >= 10
    assert max(Counter(r["label"] for r in train).values()) <= 150  # no topic dominates

    spec, train, eval_ = built["chatterbot-qa"]
    assert spec["type"] == "retrieval" and "labels" not in spec
    assert 450 <= len(train) <= 650 and 150 <= len(eval_) <= 220

    spec, train, eval_ = built["lee-similarity"]
    assert spec["type"] == "pair_similarity"
    assert (len(train), len(eval_)) == (35 * 34 // 2, 15 * 14 // 2)
    scores = [r["score"] for r in train + eval_]
    assert min(scores) >= 0.2 and max(scores) <= 1.0 and 0.25 < sum(scores) / len(scores) < 0.45

    spec, train, eval_ = built["chatterbot-gen"]
    assert (spec["type"], spec["base_model"], "labels" in spec) == ("generation", "smollm2", False)
    assert (len(train), len(eval_)) == (539, 180)
    assert all(set(r) == {"prompt", "response"} and r["prompt"].strip() and r["response"].strip() for r in train + eval_)


def test_generation_pairs_are_the_qa_pairs_and_split(built):
    _s, qa_train, qa_eval = built["chatterbot-qa"]
    _s, train, eval_ = built["chatterbot-gen"]
    assert train == [{"prompt": r["query"], "response": r["positive"]} for r in qa_train]
    assert eval_ == [{"prompt": r["query"], "response": r["positive"]} for r in qa_eval]
    qa_train_texts = {_key(r[f]) for r in qa_train for f in ("query", "positive")}
    assert not {_key(r["prompt"]) for r in eval_} & qa_train_texts  # multi-task training cannot leak gen eval


def test_splits_are_fixed(built):
    for name in TASK_NAMES:
        assert build_task(name) == built[name], name


@pytest.mark.parametrize("name", TASK_NAMES)
def test_no_eval_text_in_train(built, name):
    spec, train, eval_ = built[name]
    fields = {
        "classification": ["text"],
        "retrieval": ["query", "positive"],
        "pair_similarity": ["text_a", "text_b"],
        "generation": ["prompt", "response"],
    }
    fields = fields[spec["type"]]
    train_texts = {_key(r[f]) for r in train for f in fields}
    eval_texts = {_key(r[f]) for r in eval_ for f in fields}
    assert train_texts and eval_texts
    assert not train_texts & eval_texts
    main_field = fields[0]
    assert len({_key(r[main_field]) for r in train}) == len(train) or spec["type"] == "pair_similarity"


def test_lee_pairs_split_by_document(built):
    _spec, train, eval_ = built["lee-similarity"]
    train_docs = {r["text_a"] for r in train} | {r["text_b"] for r in train}
    eval_docs = {r["text_a"] for r in eval_} | {r["text_b"] for r in eval_}
    assert (len(train_docs), len(eval_docs)) == (35, 15)
    assert not train_docs & eval_docs
    assert any("£" in d for d in train_docs | eval_docs)  # Latin-1 decoded, not mangled


def test_descriptions_are_words(built):
    for name, (spec, _t, _e) in built.items():
        assert len(spec["description"].split()) >= 15, name


def test_export_round_trip(tmp_path, built):
    for name in ("chatterbot-topic", "lee-similarity", "chatterbot-gen"):
        path = export_task(name, tmp_path / name)
        assert path == tmp_path / name / "task.yaml" and verify_digest(path)
        task = load_task(path)
        spec, train, eval_ = built[name]
        assert (task.name, task.type, task.labels, task.description) == (name, spec["type"], spec.get("labels"), spec["description"])
        assert task.base_model == spec["base_model"]
        assert task.data.train.as_posix() == "train.jsonl" and task.data.eval.as_posix() == "eval.jsonl"
        assert load_rows(task.train_path, task.type, task.labels) == train
        assert load_rows(task.eval_path, task.type, task.labels) == eval_
        assert verify_digest(task.train_path) and verify_digest(task.eval_path)
    assert not list(tmp_path.rglob("*.tmp"))


def test_cli_export_and_list(tmp_path, capsys):
    assert main(["tasks", "export", "chatterbot-qa", "--out", str(tmp_path / "qa")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "qa" / "task.yaml")
    assert load_task(tmp_path / "qa" / "task.yaml").type == "retrieval"

    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    for name in TASK_NAMES:
        assert name in out
    assert "3000" in out and "1000" in out and "595" in out and "105" in out and "539" in out and "180" in out


def test_cli_export_unknown_name(tmp_path, capsys):
    assert main(["tasks", "export", "imdb", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown task 'imdb': use one of [rt-sentiment, chatterbot-topic, chatterbot-qa, lee-similarity, chatterbot-gen]"
    assert not (tmp_path / "x").exists()


def test_cli_export_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("keep me")
    assert main(["tasks", "export", "lee-similarity", "--out", str(tmp_path / "f")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "keep me"
