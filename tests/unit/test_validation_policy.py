"""The task.yaml `validation:` block: each check's default severity and its overrides, bad rows dropped
within their allowance, `taskloom tasks dedup`, and one line naming file:row for rows that cannot be read
(deep nesting, invalid UTF-8, NUL bytes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from taskloom.artifacts import sha256_file
from taskloom.cli import main
from taskloom.data.rows import load_rows
from taskloom.data.validation import ValidationReport, validate_task
from taskloom.errors import UserError
from taskloom.specs import ValidationPolicy, load_task
from taskloom.tasks.catalog import build_task
from taskloom.train.evaluate import load_split


@pytest.fixture(scope="module")
def rt():
    _spec, train, eval_ = build_task("rt-sentiment")
    return [dict(r) for r in train[:150]], [dict(r) for r in eval_[:40]]


def write_task(folder: Path, train, eval_, validation: dict | None = None, **spec) -> Path:
    """task.yaml + splits; a row given as bytes is written as that line verbatim."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"name": "t", "type": "classification", "description": "a test task", "labels": ["fresh", "rotten"],
           "data": {"train": "train.jsonl", "eval": "eval.jsonl"}, **spec}
    if validation is not None:
        doc["validation"] = validation
    doc = {k: v for k, v in doc.items() if v is not None}
    for name, rows in (("train.jsonl", train), ("eval.jsonl", eval_)):
        lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
        (folder / name).write_bytes(b"".join(line + b"\n" for line in lines))
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "task.yaml"


def by_name(report: ValidationReport) -> dict[tuple[str, str], object]:
    return {(c.name, c.split): c for c in report.checks}


def warned(report: ValidationReport) -> set[tuple[str, str]]:
    return {(c.name, c.split) for c in report.warnings}


def failed(report: ValidationReport) -> set[tuple[str, str]]:
    return {(c.name, c.split) for c in report.failures}


def debate(train):
    """A transcript's short answers, repeated with the same label, amid real rows."""
    return train[:40] + [{"text": "Yes.", "label": "fresh"}] * 4 + [{"text": "OK.", "label": "rotten"}] * 3


def test_defaults():
    p = ValidationPolicy()
    assert (p.duplicates.severity, p.leakage.severity, p.class_balance.severity) == ("warning",) * 3
    assert (p.conflicts.severity, p.conflicts.max_share) == ("error", 0.01)
    assert (p.bad_rows.severity, p.bad_rows.max_share) == ("error", 0.01)
    assert (p.min_rows.severity, p.min_rows.train, p.min_rows.eval, p.text_lengths.max_chars) == ("error", 20, 10, 10_000)


def test_debate_transcript_passes_with_a_warning(tmp_path, rt, capsys):
    task = write_task(tmp_path / "t", debate(rt[0]), rt[1])
    out = tmp_path / "report"
    assert main(["validate", str(task), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "PASSED, 1" in captured.out  # the table's title: "PASSED, 1 warning(s)", wrapped at 120 columns
    assert re.search(r"warn: duplicates \(train\): 5 repeated rows in 2 groups: .*'Yes\.' ×4 \(rows 41, 42, 43 and 1 more\)",
                     captured.out)
    page = (out / "validation.html").read_text()
    assert "warnings (1)" in page and "5 repeated rows in 2 groups" in page and "&#x27;Yes.&#x27; ×4" in page
    doc = json.loads((out / "validation.json").read_text())
    assert doc["success"] is True and doc["warnings"] == ["duplicates"]


def test_conflicting_labels_fail_above_their_share(tmp_path, rt, capsys):
    train = rt[0][:60] + [{"text": "Yes.", "label": "fresh"}, {"text": "yes. ", "label": "rotten"}]
    task = write_task(tmp_path / "t", train, rt[1])
    report = validate_task(load_task(task))
    assert failed(report) == {("conflicts", "train")}  # 2 of 62 rows: 3.2% > 1%
    conflict = by_name(report)[("conflicts", "train")]
    assert conflict.observed == "2 rows in 1 groups (3.2%, max 1.0%)"
    assert "row 61: 'Yes.' has label 'fresh' (rows 61), 'rotten' (rows 62)" in conflict.detail
    assert main(["validate", str(task)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation failed: conflicts (train)" in err[0] and "train.jsonl: the same text" in err[0]

    allowed = write_task(tmp_path / "a", train, rt[1], validation={"conflicts": {"severity": "error", "max_share": 0.05}})
    report = validate_task(load_task(allowed))
    assert report.success and warned(report) == {("conflicts", "train")}
    lenient = write_task(tmp_path / "w", train, rt[1], validation={"conflicts": {"severity": "warning"}})
    assert warned(validate_task(load_task(lenient))) == {("conflicts", "train")}


def test_severity_overrides(tmp_path, rt):
    train, eval_ = debate(rt[0]), rt[1][:8] + [dict(rt[0][0])]
    strict = {"duplicates": {"severity": "error"}, "leakage": {"severity": "error"}, "min_rows": {"eval": 5}}
    report = validate_task(load_task(write_task(tmp_path / "s", train, eval_, validation=strict)))
    assert failed(report) == {("duplicates", "train"), ("leakage", "eval")}
    assert by_name(report)[("min_rows", "eval")].observed == "9 rows (min 5)"

    off = {"duplicates": {"severity": "off"}, "leakage": {"severity": "off"}, "min_rows": {"severity": "off"},
           "class_balance": {"severity": "off"}}
    report = validate_task(load_task(write_task(tmp_path / "o", train, eval_, validation=off)))
    assert report.success and not report.warnings
    names = {c.name for c in report.checks}
    assert not names & {"duplicates", "leakage", "min_rows", "class_balance"} and "conflicts" in names

    short = {"text_lengths": {"severity": "warning", "max_chars": 20}}
    report = validate_task(load_task(write_task(tmp_path / "l", rt[0][:60], rt[1], validation=short)))
    assert report.success and ("text_lengths", "train") in warned(report)


def test_bad_policy_is_one_line(tmp_path, rt, capsys):
    task = write_task(tmp_path / "t", rt[0][:30], rt[1], validation={"duplicates": {"severity": "fatal"}})
    assert main(["validate", str(task)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task.yaml: validation.duplicates.severity: Input should be 'error', 'warning' or 'off'" in err[0]
    task = write_task(tmp_path / "u", rt[0][:30], rt[1], validation={"duplicate": {"severity": "off"}})
    with pytest.raises(UserError, match=r"validation\.duplicate: Extra inputs are not permitted"):
        load_task(task)


def test_overlap_names_the_rows(tmp_path, rt):
    train, eval_ = rt
    eval_ = eval_[:30] + [dict(train[i]) for i in (2, 4, 6, 8, 10)]
    report = validate_task(load_task(write_task(tmp_path / "t", train, eval_)))
    assert report.success and warned(report) == {("leakage", "eval")}
    leak = by_name(report)[("leakage", "eval")]
    assert leak.observed == "5 eval rows in train"
    assert re.search(r"eval\.jsonl: row 31: field 'text': also in the train split \(.*train\.jsonl\); 5 eval rows: "
                     r"row 31 = train row 3 \(field 'text'\); row 32 = train row 5 \(field 'text'\); "
                     r"row 33 = train row 7 \(field 'text'\); and 2 more$", leak.detail)


def test_bad_rows_below_the_share_are_dropped_and_counted(tmp_path, rt):
    train = rt[0][:100] + [b'{"text": "cut off', {"text": "fine", "label": "meh"}] + rt[0][100:]
    task = write_task(tmp_path / "t", train, rt[1], validation={"bad_rows": {"severity": "error", "max_share": 0.02}})
    spec = load_task(task)
    before = sha256_file(spec.train_path)
    report = validate_task(spec)
    assert report.success and warned(report) == {("bad_rows", "train")}
    assert report.rows == {"train": 150, "eval": 40} and report.dropped == {"train": 2, "eval": 0}
    bad = by_name(report)[("bad_rows", "train")]
    assert bad.observed == "2 of 152 rows (1.3%, max 2.0%) dropped"
    assert re.search(r"train\.jsonl: row 101: malformed JSON: .*; .*train\.jsonl: row 102: field 'label': 'meh'", bad.detail)
    rows = load_split(spec, "train")  # where training and evaluation read the data: dropped there too
    assert len(rows) == 150 and {"text": "fine", "label": "meh"} not in rows
    assert sha256_file(spec.train_path) == before

    # the default allowance is 1 %: the same two rows are an error, and training stops with the first one's line
    strict = load_task(write_task(tmp_path / "d", train, rt[1]))
    report = validate_task(strict)
    assert failed(report) == {("bad_rows", "train")}
    with pytest.raises(UserError, match=r"train\.jsonl: row 101: malformed JSON: .*\(2 of 152 rows bad, 1\.3%; "
                                        r"validation\.bad_rows allows 1\.0%\)"):
        load_split(strict, "train")
    one = load_task(write_task(tmp_path / "o", rt[0][:100] + [b"{]"] + rt[0][100:], rt[1]))
    assert len(load_rows(one.train_path, one.type, one.labels, one.validation.bad_rows)) == 150  # 1 of 151: dropped


def test_dedup_writes_clean_copies_and_leaves_inputs_alone(tmp_path, rt, capsys):
    train = debate(rt[0]) + [{"text": "Maybe.", "label": "fresh"}, {"text": "maybe.", "label": "rotten"}]
    eval_ = rt[1][:30] + [dict(rt[0][2]), dict(rt[0][2])]
    task = write_task(tmp_path / "t", train, eval_)
    inputs = sorted((tmp_path / "t").iterdir())
    before = {p.name: sha256_file(p) for p in inputs}
    out = tmp_path / "clean"
    assert main(["tasks", "dedup", str(task), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "train: removed 5 row(s), repeated: rows 42, 43, 44, 46, 47" in printed
    assert "train: removed 2 row(s), conflicting: rows 48, 49" in printed
    assert "eval: removed 1 row(s), repeated: rows 32" in printed and "eval: removed 1 row(s), in train: rows 31" in printed
    assert {p.name: sha256_file(p) for p in sorted((tmp_path / "t").iterdir())} == before
    clean = load_task(out / "task.yaml")
    report = validate_task(clean)
    assert report.success and not report.warnings, report.render()
    assert report.rows == {"train": len(train) - 7, "eval": 30}
    removed = json.loads((out / "dedup.json").read_text())["removed"]
    assert {"row": 31, "why": "in train", "detail": "field 'text' is train row 3"} in removed["eval"]

    # --out on the task's own folder would overwrite it: refused, nothing written
    assert main(["tasks", "dedup", str(task), "--out", str(tmp_path / "t")]) == 2
    assert "would overwrite the task's own files" in capsys.readouterr().err
    assert {p.name: sha256_file(p) for p in sorted((tmp_path / "t").iterdir())} == before


def nested(depth: int, inner: str = '"x"') -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


UNREADABLE = [
    (b'{"text": ' + nested(5000) + b', "label": "fresh"}', r"row 3: malformed JSON: nested more than 32 levels deep"),
    (nested(5000), r"row 3: malformed JSON: nested more than 32 levels deep"),
    (b'{"text": "a", "label": "fresh", "extra": ' + nested(200) + b"}", r"row 3: nested more than 32 levels deep"),
    (b'{"text": "caf\xe9", "label": "fresh"}', r"row 3: not UTF-8 text"),
    (b'{"text": "a\x00b", "label": "fresh"}', r"row 3: contains a NUL byte"),
    (b'{"text": "a", "label": "fresh"}\x00', r"row 3: contains a NUL byte"),
]


@pytest.mark.parametrize("line,message", UNREADABLE, ids=["deep-field", "deep-top", "deep-extra", "utf8", "nul", "nul-end"])
def test_unreadable_row_is_one_line_naming_file_and_row(tmp_path, rt, capsys, line, message):
    task = write_task(tmp_path / "t", rt[0][:2] + [line] + rt[0][2:30], rt[1])
    before = sha256_file(tmp_path / "t" / "train.jsonl")
    assert main(["validate", str(task)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.search(r"validation failed: bad_rows \(train\): .*train\.jsonl: " + message, err[0]), err[0]
    assert "Traceback" not in err[0]
    spec = load_task(task)
    with pytest.raises(UserError, match=r"train\.jsonl: " + message):
        load_split(spec, "train")
    assert sha256_file(tmp_path / "t" / "train.jsonl") == before
