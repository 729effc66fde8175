"""Great Expectations suites on real task data: good tasks pass, each kind of bad data fails the
check that names it; imbalance, repeats and train/eval leakage only warn (tests/unit/test_validation_policy.py
covers the task.yaml `validation:` block)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from taskloom.artifacts import sha256_file, verify_digest
from taskloom.cli import main
from taskloom.data.validation import ValidationReport, validate_task
from taskloom.specs import load_task
from taskloom.tasks.catalog import build_task, export_task


@pytest.fixture(scope="module")
def rt():
    _spec, train, eval_ = build_task("rt-sentiment")
    return [dict(r) for r in train[:60]], [dict(r) for r in eval_[:30]]


def write_task(folder: Path, train, eval_, **spec) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"name": "t", "type": "classification", "description": "a test task", "labels": ["fresh", "rotten"],
           "data": {"train": "train.jsonl", "eval": "eval.jsonl"}, **spec}
    doc = {k: v for k, v in doc.items() if v is not None}
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in eval_))
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "task.yaml"


def checks(report: ValidationReport) -> dict[tuple[str, str], object]:
    return {(c.name, c.split): c for c in report.checks}


def failed(report: ValidationReport) -> set[tuple[str, str]]:
    return {(c.name, c.split) for c in report.failures}


def test_exported_task_is_valid(tmp_path, capsys):
    task = export_task("rt-sentiment", tmp_path / "rt")
    out = tmp_path / "report"
    assert main(["validate", str(task), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "PASSED" in captured.out and "leakage" in captured.out and captured.err == ""
    doc = json.loads((out / "validation.json").read_text())
    assert verify_digest(out / "validation.json")
    assert doc["success"] is True and doc["rows"] == {"train": 3000, "validation": 1000, "eval": 1000}
    assert doc["engine"].startswith("great_expectations 1.")
    names = {(c["name"], c["split"]) for c in doc["checks"]}
    for split in ("train", "validation", "eval"):
        for name in ("schema", "nulls", "label_set", "text_lengths", "duplicates", "min_rows", "class_balance"):
            assert (name, split) in names
    assert ("leakage", "eval") in names and ("leakage", "validation") in names and ("leakage", "train") not in names
    leaks = {c["split"]: c["observed"] for c in doc["checks"] if c["name"] == "leakage"}
    assert leaks == {"validation": "0 validation rows in train", "eval": "0 eval rows in train or validation"}
    balance = next(c for c in doc["checks"] if c["name"] == "class_balance" and c["split"] == "train")
    assert "50.0%" in balance["observed"]
    assert "<table>" in (out / "validation.html").read_text()


@pytest.mark.parametrize("name", ["chatterbot-topic", "chatterbot-qa", "lee-similarity"])
def test_other_builtin_tasks_are_valid(tmp_path, name):
    report = validate_task(load_task(export_task(name, tmp_path / name)))
    assert report.success, report.render()
    assert report.rows["train"] > report.rows["eval"] >= 100
    if name == "chatterbot-topic":  # twelve uneven topics: passes, smallest share reported
        assert not report.warnings
        assert "%" in checks(report)[("class_balance", "train")].observed


def test_leaked_eval_text_warns_leakage(tmp_path, rt, capsys):
    train, eval_ = rt
    eval_ = eval_[:-1] + [{"text": "  " + train[5]["text"].upper() + " ", "label": train[5]["label"]}]
    task = write_task(tmp_path / "t", train, eval_)
    report = validate_task(load_task(task))
    assert report.success and [(c.name, c.split) for c in report.warnings] == [("leakage", "eval")]
    leak = checks(report)[("leakage", "eval")]
    assert leak.observed == "1 eval rows in train"
    assert re.search(r"eval\.jsonl: row 30: field 'text': also in the train split", leak.detail)
    assert "row 30 = train row 6" in leak.detail

    assert main(["validate", str(task)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and re.search(r"warn: leakage \(eval\): .*row 30", captured.out)


def test_duplicates_warn(tmp_path, rt):
    train, eval_ = rt
    train = train + [dict(train[3]), dict(train[3])]
    report = validate_task(load_task(write_task(tmp_path / "t", train, eval_)))
    assert report.success and [(c.name, c.split) for c in report.warnings] == [("duplicates", "train")]
    dup = checks(report)[("duplicates", "train")]
    assert dup.observed == "2 repeated rows in 1 groups"
    assert "×3 (rows 4, 61, 62)" in dup.detail


def test_unknown_label_fails_label_set(tmp_path, rt, capsys):
    train, eval_ = rt
    eval_ = [dict(r) for r in eval_]
    eval_[16]["label"] = "meh"
    task = write_task(tmp_path / "t", train, eval_)
    before = sha256_file(tmp_path / "t" / "eval.jsonl")
    out = tmp_path / "out"
    assert main(["validate", str(task), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1
    assert re.search(r"validation failed: bad_rows \(eval\): .*eval\.jsonl: row 17: field 'label': 'meh' is not one of \[fresh, rotten\]", err[0])
    assert "FAILED" in captured.out
    assert "row 17: field 'label': 'meh' is not one of [fresh, rotten]" in captured.out
    doc = json.loads((out / "validation.json").read_text())  # the report is the output of a failed validation
    assert doc["success"] is False and doc["failed"] == ["bad_rows"]
    assert sha256_file(tmp_path / "t" / "eval.jsonl") == before


def test_class_imbalance_warns_but_passes(tmp_path, rt, capsys):
    train, eval_ = rt
    fresh = [r for r in train if r["label"] == "fresh"]
    rotten = [r for r in train if r["label"] == "rotten"]
    train = fresh[:18] + rotten[:2]  # rotten 10% < 12.5% (a quarter of an even share)
    task = write_task(tmp_path / "t", train, eval_)
    assert main(["validate", str(task)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert re.search(r"class_balance .*'rotten' 10\.0% \(min 12\.5%\).*warn", captured.out)
    report = validate_task(load_task(task))
    assert report.success and [(c.name, c.split) for c in report.warnings] == [("class_balance", "train")]


def test_too_few_rows_and_blank_text(tmp_path, rt):
    train, eval_ = rt
    eval_ = eval_[:8] + [{"text": "   ", "label": "fresh"}]
    report = validate_task(load_task(write_task(tmp_path / "t", train, eval_)))
    assert failed(report) == {("min_rows", "eval"), ("bad_rows", "eval")}  # the blank row is dropped
    assert checks(report)[("min_rows", "eval")].observed == "8 rows (min 10)"
    assert "row 9: field 'text': is blank" in checks(report)[("bad_rows", "eval")].detail


def test_pair_task_sharing_a_document_leaks(tmp_path):
    _spec, train, eval_ = build_task("lee-similarity")
    eval_ = eval_ + [{"text_a": train[0]["text_a"], "text_b": eval_[0]["text_b"], "score": 0.5}]
    task = write_task(tmp_path / "p", train, eval_, type="pair_similarity", labels=None)
    report = validate_task(load_task(task))
    assert report.success and {(c.name, c.split) for c in report.warnings} == {("leakage", "eval")}
    assert "row 106: field 'text_a'" in checks(report)[("leakage", "eval")].detail


def test_retrieval_duplicates_are_the_same_pair(tmp_path):
    _spec, train, eval_ = build_task("chatterbot-qa")
    another_positive = {"query": eval_[0]["query"].lower(), "positive": "something else"}
    task = write_task(tmp_path / "q", train, eval_ + [another_positive], type="retrieval", labels=None)
    report = validate_task(load_task(task))
    assert report.success and not report.warnings  # one query with two positives: two examples
    same_pair = {"query": eval_[0]["query"].lower(), "positive": eval_[0]["positive"]}
    task = write_task(tmp_path / "q", train, eval_ + [same_pair], type="retrieval", labels=None)
    report = validate_task(load_task(task))
    assert report.success and [(c.name, c.split) for c in report.warnings] == [("duplicates", "eval")]


def test_render_and_dict(tmp_path, rt):
    report = validate_task(load_task(write_task(tmp_path / "t", *rt)))
    text = report.render()
    assert "PASSED" in text and "\x1b[" not in text
    doc = report.to_dict()
    assert set(doc) >= {"task", "type", "success", "checks", "rows"}
    assert all(c["status"] in ("ok", "FAILED", "warn") for c in doc["checks"])
