"""The optional validation split (task.yaml `data.validation`): options are chosen on it, so the eval
split stays a report. It is checked like eval, may share no text with train (nor eval with it),
travels with a staged or cleaned task, and `taskloom eval --split validation` scores it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from taskloom.artifacts import sha256_file
from taskloom.cli import main
from taskloom.data.validation import validate_task
from taskloom.specs import load_task
from taskloom.steps import stage_task
from taskloom.tasks.catalog import build_splits


def write_task(folder: Path, splits: dict[str, list[dict]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"name": "t", "type": "classification", "description": "a test task", "labels": ["fresh", "rotten"],
           "data": {s: f"{s}.jsonl" for s in splits}}
    for split, rows in splits.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "task.yaml"


def rt_rows() -> dict[str, list[dict]]:
    _spec, sp = build_splits("rt-sentiment")
    return {"train": sp["train"][:60], "validation": sp["validation"][:20], "eval": sp["eval"][:30]}


def test_validation_split_is_optional_and_checked(tmp_path, capsys):
    rows = rt_rows()
    without = load_task(write_task(tmp_path / "two", {s: rows[s] for s in ("train", "eval")}))
    assert without.splits == ["train", "eval"] and without.data.validation is None
    task = load_task(write_task(tmp_path / "three", rows))
    assert task.splits == ["train", "validation", "eval"]
    report = validate_task(task)
    assert report.success and report.rows == {"train": 60, "validation": 20, "eval": 30}, report.render()
    assert {(c.name, c.split) for c in report.checks} >= {("min_rows", "validation"), ("label_set", "validation")}

    # a missing validation file stops loading with one line, like a missing train or eval file
    (tmp_path / "three" / "validation.jsonl").unlink()
    assert main(["validate", str(tmp_path / "three" / "task.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"error: .*task\.yaml: data\.validation: file not found: .*validation\.jsonl", err)


def test_leakage_into_validation_and_from_validation_into_eval(tmp_path):
    rows = rt_rows()
    rows["validation"] = rows["validation"] + [dict(rows["train"][4])]  # validation row 21 = train row 5
    rows["eval"] = rows["eval"] + [dict(rows["validation"][2])]  # eval row 31 = validation row 3
    task = load_task(write_task(tmp_path / "t", rows))
    report = validate_task(task)
    assert report.success  # leakage warns by default
    leaks = {c.split: c for c in report.warnings if c.name == "leakage"}
    assert set(leaks) == {"validation", "eval"}
    assert leaks["validation"].observed == "1 validation rows in train"
    assert "row 21 = train row 5" in leaks["validation"].detail
    assert leaks["eval"].observed == "1 eval rows in train or validation"
    assert re.search(r"eval\.jsonl: row 31: field 'text': also in the validation split \(.*validation\.jsonl\)",
                     leaks["eval"].detail)

    # the policy turns it into an error for every held-out split
    doc = yaml.safe_load((tmp_path / "t" / "task.yaml").read_text())
    doc["validation"] = {"leakage": {"severity": "error"}}
    (tmp_path / "t" / "task.yaml").write_text(yaml.safe_dump(doc))
    report = validate_task(load_task(tmp_path / "t" / "task.yaml"))
    assert {(c.name, c.split) for c in report.failures} == {("leakage", "validation"), ("leakage", "eval")}


def test_dedup_and_stage_carry_the_validation_split(tmp_path, capsys):
    rows = rt_rows()
    rows["validation"] = rows["validation"] + [dict(rows["train"][4])]
    rows["eval"] = rows["eval"] + [dict(rows["validation"][2])]
    task = write_task(tmp_path / "t", rows)
    before = {p.name: sha256_file(p) for p in (tmp_path / "t").iterdir()}
    assert main(["tasks", "dedup", str(task), "--out", str(tmp_path / "clean")]) == 0
    printed = capsys.readouterr().out
    assert "validation: removed 1 row(s), in train: rows 21" in printed
    assert "eval: removed 1 row(s), in validation: rows 31" in printed
    clean = load_task(tmp_path / "clean" / "task.yaml")
    report = validate_task(clean)
    assert report.success and not report.warnings and report.rows == {"train": 60, "validation": 20, "eval": 30}
    assert {p.name: sha256_file(p) for p in (tmp_path / "t").iterdir()} == before  # inputs untouched

    staged = load_task(stage_task(str(tmp_path / "clean" / "task.yaml"), tmp_path / "staged")["task_file"])
    assert staged.splits == ["train", "validation", "eval"]
    assert staged.split_path("validation").read_bytes() == clean.split_path("validation").read_bytes()
    builtin = load_task(stage_task("lee-similarity", tmp_path / "lee", (40, 10))["task_file"])
    assert builtin.splits == ["train", "validation", "eval"]


def test_eval_scores_the_validation_split(tmp_path, capsys):
    rows = rt_rows()
    task = write_task(tmp_path / "t", rows)
    assert main(["eval", str(task), "--split", "validation"]) == 0
    val = json.loads(capsys.readouterr().out)
    assert main(["eval", str(task)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert (val["metric"], ev["metric"]) == ("accuracy", "accuracy")
    assert (val["n"], val["split"], ev["n"], ev["split"]) == (20, "validation", 30, "eval")  # each its own split
    assert main(["eval", str(task), "--split", "test"]) == 2
    assert capsys.readouterr().err.strip() == "error: --split 'test': use eval or validation"
    two = write_task(tmp_path / "two", {s: rows[s] for s in ("train", "eval")})
    assert main(["eval", str(two), "--split", "validation"]) == 2
    assert capsys.readouterr().err.strip() == "error: task t: no validation split (task.yaml data: has train, eval)"


def test_merge_probes_come_from_validation_when_there_is_one(tmp_path):
    from taskloom.merge.search import load_probes

    rows = rt_rows()
    three = write_task(tmp_path / "three", rows)
    two = write_task(tmp_path / "two", {s: rows[s] for s in ("train", "eval")})
    p3, p2 = load_probes([three, two], [], rows_per_task=8, seed=0, heads=False)
    assert (p3.split, p2.split) == ("validation", "train")
    keys = {json.dumps(r, sort_keys=True) for r in rows["validation"]}
    assert len(p3.rows) == 8 and all(json.dumps(r, sort_keys=True) in keys for r in p3.rows)


def test_validation_may_not_be_the_train_or_eval_file(tmp_path, capsys):
    rows = rt_rows()
    task = write_task(tmp_path / "t", rows)
    doc = yaml.safe_load(task.read_text())
    for other in ("eval", "train"):
        doc["data"]["validation"] = f"./{other}.jsonl"  # spelled differently, the same file
        task.write_text(yaml.safe_dump(doc))
        assert main(["validate", str(task)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"data.validation: the same file as data.{other}; it must be rows of neither"), err
