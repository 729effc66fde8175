"""`taskloom validate` on broken inputs: exit 2, one stderr line naming file/row/field, nothing written
but a complete report for bad rows (the bad_rows check), inputs untouched."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from taskloom.artifacts import sha256_file
from taskloom.cli import main
from taskloom.data.rows import write_rows
from taskloom.tasks.catalog import build_task


@pytest.fixture(scope="module")
def rt_rows():
    _spec, train, eval_ = build_task("rt-sentiment")
    return train[:40], eval_[:20]


@pytest.fixture(scope="module")
def lee_rows():
    _spec, train, eval_ = build_task("lee-similarity")
    return train[:30], eval_[:15]


def write_task(folder: Path, train, eval_, **spec) -> Path:
    """A task folder written the way users write one (plain files, no digests)."""
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"name": "t", "type": "classification", "description": "a test task", "labels": ["fresh", "rotten"],
           "data": {"train": "train.jsonl", "eval": "eval.jsonl"}, **spec}
    doc = {k: v for k, v in doc.items() if v is not None}
    for split, rows in (("train", train), ("eval", eval_)):
        name = doc["data"][split]
        if rows is not None and name.endswith(".jsonl"):
            (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "task.yaml"


def lines(rows) -> list[str]:
    return [json.dumps(r) for r in rows]


def classification(tmp, rt_rows, eval_lines=None, train_lines=None, **spec):
    train, eval_ = rt_rows
    task = write_task(tmp / "task", train, eval_, **spec)
    if eval_lines is not None:
        (tmp / "task" / "eval.jsonl").write_text("\n".join(eval_lines) + "\n")
    if train_lines is not None:
        (tmp / "task" / "train.jsonl").write_text("\n".join(train_lines) + "\n")
    return task


def pairs(tmp, lee_rows, eval_lines):
    train, eval_ = lee_rows
    task = write_task(tmp / "task", train, eval_, type="pair_similarity", labels=None)
    (tmp / "task" / "eval.jsonl").write_text("\n".join(eval_lines) + "\n")
    return task


def _case_malformed_json(tmp, rt, lee):
    ev = lines(rt[1])
    ev[2] = ev[2][:-5]
    return classification(tmp, rt, eval_lines=ev), r"eval\.jsonl: row 3: malformed JSON"


def _case_non_object(tmp, rt, lee):
    ev = lines(rt[1])
    ev[4] = json.dumps([rt[1][4]["text"], rt[1][4]["label"]])
    return classification(tmp, rt, eval_lines=ev), r"eval\.jsonl: row 5: expected a JSON object"


def _case_missing_field(tmp, rt, lee):
    tr = lines(rt[0])
    tr[6] = json.dumps({"text": rt[0][6]["text"]})
    return classification(tmp, rt, train_lines=tr), r"train\.jsonl: row 7: field 'label': missing"


def _case_text_is_number(tmp, rt, lee):
    tr = lines(rt[0])
    tr[0] = json.dumps({"text": 42, "label": "fresh"})
    return classification(tmp, rt, train_lines=tr), r"train\.jsonl: row 1: field 'text': expected a string, got a number"


def _case_score_not_numeric(tmp, rt, lee):
    ev = lines(lee[1])
    ev[1] = json.dumps({**lee[1][1], "score": "very similar"})
    return pairs(tmp, lee, ev), r"eval\.jsonl: row 2: field 'score': expected a number in \[0, 1\]"


def _case_score_out_of_range(tmp, rt, lee):
    ev = lines(lee[1])
    ev[9] = json.dumps({**lee[1][9], "score": 4.5})
    return pairs(tmp, lee, ev), r"eval\.jsonl: row 10: field 'score': 4.5 is outside \[0, 1\]"


def _case_empty_file(tmp, rt, lee):
    task = classification(tmp, rt)
    (tmp / "task" / "eval.jsonl").write_text("")
    return task, r"eval\.jsonl: no rows"


def _case_unreadable_parquet(tmp, rt, lee):
    task = write_task(tmp / "task", rt[0], rt[1], data={"train": "train.parquet", "eval": "eval.jsonl"})
    (tmp / "task" / "train.parquet").write_bytes(b"PAR1\x00\x01 definitely not parquet")
    return task, r"train\.parquet: not a readable Parquet file"


def _case_parquet_bad_row(tmp, rt, lee):
    task = write_task(tmp / "task", rt[0], rt[1], data={"train": "train.jsonl", "eval": "eval.parquet"})
    write_rows(tmp / "task" / "eval.parquet", [{"text": r["text"], "label": i % 2} for i, r in enumerate(rt[1])])
    return task, r"eval\.parquet: row 1: field 'label': expected a string, got a number"


def _case_malformed_yaml(tmp, rt, lee):
    task = classification(tmp, rt)
    task.write_text("name: t\ntype: classification\nlabels: [fresh, rotten\ndata: {train: train.jsonl}\n")
    return task, r"task\.yaml: malformed YAML \(line \d+\)"


def _case_missing_data_file(tmp, rt, lee):
    task = classification(tmp, rt)
    (tmp / "task" / "eval.jsonl").unlink()
    return task, r"task\.yaml: data\.eval: file not found"


def _case_unknown_base_model(tmp, rt, lee):
    return classification(tmp, rt, base_model="nope"), r"task\.yaml: base_model: unknown base model 'nope'"


def _case_labels_missing(tmp, rt, lee):
    return classification(tmp, rt, labels=None), r"task\.yaml: .*labels: required for a classification task"


def _case_task_file_missing(tmp, rt, lee):
    return tmp / "task" / "task.yaml", r"task\.yaml: file not found"


CASES = {name[len("_case_"):]: fn for name, fn in dict(globals()).items() if name.startswith("_case_")}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("*")) if p.is_file()} if folder.exists() else {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_bad_input(tmp_path, capsys, rt_rows, lee_rows, case):
    task, message = CASES[case](tmp_path, rt_rows, lee_rows)
    before = _digests(tmp_path / "task")
    out = tmp_path / "out"
    code = main(["validate", str(task), "--out", str(out)])
    captured = capsys.readouterr()
    err_lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(err_lines) == 1, captured.err
    assert err_lines[0].startswith("error: ")
    assert re.search(message, err_lines[0]), err_lines[0]
    assert "Traceback" not in captured.err + captured.out
    if re.search(r": row \d", message):  # a bad row is a failed check: the whole report names it
        assert json.loads((out / "validation.json").read_text())["failed"][0] == "bad_rows"
    else:
        assert not out.exists()  # nothing written
    assert _digests(tmp_path / "task") == before  # inputs untouched


def test_cases_cover_the_brief():
    assert len(CASES) == 14


def test_out_is_a_file(tmp_path, capsys, rt_rows):
    task = classification(tmp_path, rt_rows)
    (tmp_path / "out").write_text("keep me")
    assert main(["validate", str(task), "--out", str(tmp_path / "out")]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "keep me"
