"""The built-in tasks: sizes, fixed seeded splits (train, validation, eval) that share no text, export round trip."""

from __future__ import annotations

from collections import Counter

import pytest

from taskloom.artifacts import verify_digest
from taskloom.cli import main
from taskloom.data.rows import load_rows
from taskloom.specs import load_task
from taskloom.tasks.catalog import TASK_NAMES, build_splits, build_task, export_task


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


@pytest.fixture(scope="module")
def built():
    return {name: build_task(name) for name in TASK_NAMES}


@pytest.fixture(scope="module")
def splits():
    return {name: build_splits(name) for name in TASK_NAMES}


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
    assert (len(train), len(eval_)) == (29 * 28 // 2, 15 * 14 // 2)
    scores = [r["score"] for r in train + eval_]
    assert min(scores) >= 0.2 and max(scores) <= 1.0 and 0.25 < sum(scores) / len(scores) < 0.45

    spec, train, eval_ = built["chatterbot-gen"]
    assert (spec["type"], spec["base_model"], "labels" in spec) == ("generation", "smollm2", False)
    assert (len(train), len(eval_)) == (458, 180)
    assert all(set(r) == {"prompt", "response"} and r["prompt"].strip() and r["response"].strip() for r in train + eval_)


def test_generation_pairs_are_the_qa_pairs_and_split(built):
    _s, qa_train, qa_eval = built["chatterbot-qa"]
    _s, train, eval_ = built["chatterbot-gen"]
    assert train == [{"prompt": r["query"], "response": r["positive"]} for r in qa_train]
    assert eval_ == [{"prompt": r["query"], "response": r["positive"]} for r in qa_eval]
    qa_train_texts = {_key(r[f]) for r in qa_train for f in ("query", "positive")}
    assert not {_key(r["prompt"]) for r in eval_} & qa_train_texts  # multi-task training cannot leak gen eval


def test_splits_are_fixed(built, splits):
    for name in TASK_NAMES:
        assert build_task(name) == built[name], name
        assert build_splits(name) == splits[name], name
        spec, train, eval_ = built[name]
        assert (train, eval_) == (splits[name][1]["train"], splits[name][1]["eval"])
        assert spec["data"] == {"train": "train.jsonl", "eval": "eval.jsonl"}  # the two files build_task returns
        assert splits[name][0]["data"]["validation"] == "validation.jsonl"


def test_validation_sizes(splits):
    sizes = {name: {s: len(rows) for s, rows in sp.items()} for name, (_spec, sp) in splits.items()}
    # rt-sentiment takes validation from the corpus's unused reviews: train and eval are as before
    assert sizes["rt-sentiment"] == {"train": 3000, "validation": 1000, "eval": 1000}
    assert Counter(r["label"] for r in splits["rt-sentiment"][1]["validation"]) == {"fresh": 500, "rotten": 500}
    # the others carve 15 % of what was train: chatterbot pairs by question, Lee by document
    assert sizes["chatterbot-qa"] == {"train": 458, "validation": 81, "eval": 180}
    assert sizes["lee-similarity"] == {"train": 406, "validation": 15, "eval": 105}
    topic = splits["chatterbot-topic"]
    assert set(Counter(r["label"] for r in topic[1]["validation"])) == set(topic[0]["labels"])  # every topic
    assert 0.13 < sizes["chatterbot-topic"]["validation"] / (sizes["chatterbot-topic"]["train"] + sizes["chatterbot-topic"]["validation"]) < 0.17


@pytest.mark.parametrize("name", TASK_NAMES)
def test_no_text_shared_between_splits(splits, name):
    spec, sp = splits[name]
    fields = {
        "classification": ["text"],
        "retrieval": ["query", "positive"],
        "pair_similarity": ["text_a", "text_b"],
        "generation": ["prompt", "response"],
    }
    fields = fields[spec["type"]]
    texts = {split: {_key(r[f]) for r in rows for f in fields} for split, rows in sp.items()}
    assert all(texts.values())
    assert not texts["train"] & texts["eval"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["eval"]
    main_field = fields[0]
    train = sp["train"]
    assert len({_key(r[main_field]) for r in train}) == len(train) or spec["type"] == "pair_similarity"


def test_lee_pairs_split_by_document(splits):
    docs = {s: {r["text_a"] for r in rows} | {r["text_b"] for r in rows} for s, rows in splits["lee-similarity"][1].items()}
    assert (len(docs["train"]), len(docs["validation"]), len(docs["eval"])) == (29, 6, 15)
    assert not docs["train"] & docs["eval"] and not docs["train"] & docs["validation"] and not docs["validation"] & docs["eval"]
    assert any("£" in d for d in docs["train"] | docs["eval"])  # Latin-1 decoded, not mangled


def test_descriptions_are_words(built):
    for name, (spec, _t, _e) in built.items():
        assert len(spec["description"].split()) >= 15, name


def test_export_round_trip(tmp_path, splits):
    for name in ("chatterbot-topic", "lee-similarity", "chatterbot-gen"):
        path = export_task(name, tmp_path / name)
        assert path == tmp_path / name / "task.yaml" and verify_digest(path)
        task = load_task(path)
        spec, sp = splits[name]
        assert (task.name, task.type, task.labels, task.description) == (name, spec["type"], spec.get("labels"), spec["description"])
        assert task.base_model == spec["base_model"]
        assert task.splits == ["train", "validation", "eval"]
        assert {s: task.split_path(s).name for s in task.splits} == {s: f"{s}.jsonl" for s in task.splits}
        for split in task.splits:
            assert load_rows(task.split_path(split), task.type, task.labels) == sp[split]
            assert verify_digest(task.split_path(split))
    assert not list(tmp_path.rglob("*.tmp"))


def test_export_caps_validation_like_eval(tmp_path):
    task = load_task(export_task("rt-sentiment", tmp_path / "rt", max_train_rows=40, max_eval_rows=12))
    rows = {s: load_rows(task.split_path(s), task.type, task.labels) for s in task.splits}
    assert {s: len(r) for s, r in rows.items()} == {"train": 40, "validation": 12, "eval": 12}


def test_cli_export_and_list(tmp_path, capsys):
    assert main(["tasks", "export", "chatterbot-qa", "--out", str(tmp_path / "qa")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "qa" / "task.yaml")
    assert load_task(tmp_path / "qa" / "task.yaml").type == "retrieval"

    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    for name in TASK_NAMES:
        assert name in out
    assert "3000" in out and "1000" in out and "406" in out and "105" in out and "458" in out and "180" in out


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
