"""load_rows / write_rows: JSONL and Parquet round trips, and one precise line per bad row."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskloom.artifacts import sha256_file, verify_digest
from taskloom.data.rows import load_numbered_rows, load_rows, write_rows
from taskloom.errors import UserError

LABELS = ["fresh", "rotten"]
GOOD = {
    "classification": [{"text": "a fine film", "label": "fresh"}, {"text": "dull", "label": "rotten"}],
    "pair_similarity": [{"text_a": "x", "text_b": "y", "score": 0.25}, {"text_a": "x", "text_b": "z", "score": 1}],
    "retrieval": [{"query": "hi", "positive": "hello", "negatives": ["bye"]}, {"query": "why", "positive": "because"}],
    "generation": [{"prompt": "say hi", "response": "hi"}],
}


@pytest.mark.parametrize("task_type", sorted(GOOD))
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, task_type, suffix):
    path = tmp_path / f"rows{suffix}"
    write_rows(path, GOOD[task_type])
    assert verify_digest(path)
    rows = load_rows(path, task_type, LABELS if task_type == "classification" else None)
    assert len(rows) == len(GOOD[task_type])
    for got, want in zip(rows, GOOD[task_type]):
        for k, v in want.items():
            assert got[k] == v


def test_row_numbers_are_jsonl_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": "fresh"}\n\n{"text": "b", "label": "rotten"}\n')
    assert [n for n, _ in load_numbered_rows(path, "classification")] == [1, 3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "fresh"}\n\n{"text": "b", "label": "meh"}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl: row 3: field 'label': 'meh' is not one of \[fresh, rotten\]"):
        load_rows(bad, "classification", LABELS)


# (task type, file content, expected message fragment). Row numbers are 1-based lines.
BAD_JSONL = [
    ("classification", '{"text": "a", "label": "fresh"}\n{"text": "b", "label": \n', r"row 2: malformed JSON"),
    ("classification", '{"text": "a", "label": "fresh"}\n["b", "rotten"]\n', r"row 2: expected a JSON object"),
    ("classification", '{"text": "a"}\n', r"row 1: field 'label': missing"),
    ("classification", '{"text": 5, "label": "fresh"}\n', r"row 1: field 'text': expected a string, got a number"),
    ("classification", '{"text": null, "label": "fresh"}\n', r"row 1: field 'text': is null"),
    ("classification", '{"text": "a", "label": "fresh"}\n{"text": "b", "label": "meh"}\n', r"row 2: field 'label': 'meh' is not one of"),
    ("pair_similarity", '{"text_a": "a", "text_b": "b", "score": "high"}\n', r"row 1: field 'score': expected a number in \[0, 1\], got a string"),
    ("pair_similarity", '{"text_a": "a", "text_b": "b", "score": true}\n', r"row 1: field 'score': expected a number"),
    ("pair_similarity", '{"text_a": "a", "text_b": "b", "score": 0.5}\n{"text_a": "a", "text_b": "b", "score": 1.5}\n', r"row 2: field 'score': 1.5 is outside \[0, 1\]"),
    ("pair_similarity", '{"text_a": "a", "text_b": "b", "score": NaN}\n', r"row 1: field 'score': nan is outside"),
    ("retrieval", '{"query": "a", "positive": "b", "negatives": "c"}\n', r"row 1: field 'negatives': expected a list of strings"),
    ("generation", '{"prompt": "a", "response": ["b"]}\n', r"row 1: field 'response': expected a string, got a list"),
    ("classification", "", r"no rows"),
    ("classification", "\n  \n", r"no rows"),
]


@pytest.mark.parametrize("task_type,content,message", BAD_JSONL)
def test_bad_jsonl_is_one_line_naming_file_row_field(tmp_path, task_type, content, message):
    path = tmp_path / "eval.jsonl"
    path.write_text(content)
    before = sha256_file(path)
    with pytest.raises(UserError) as err:
        load_rows(path, task_type, LABELS if task_type == "classification" else None)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    assert re.search(message, text), text
    assert sha256_file(path) == before  # inputs are never modified


def test_not_utf8_names_the_row(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"text": "a", "label": "fresh"}\n{"text": "caf\xe9", "label": "fresh"}\n')
    with pytest.raises(UserError, match=r"train\.jsonl: row 2: not UTF-8"):
        load_rows(path, "classification")


def test_bad_parquet(tmp_path):
    junk = tmp_path / "train.parquet"
    junk.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(UserError, match=r"train\.parquet: not a readable Parquet file"):
        load_rows(junk, "classification")
    typed = tmp_path / "typed.parquet"
    write_rows(typed, [{"text": "a", "label": "fresh"}, {"text": "b", "label": None}])
    with pytest.raises(UserError, match=r"typed\.parquet: row 2: field 'label': is null"):
        load_rows(typed, "classification")
    numeric = tmp_path / "numeric.parquet"
    write_rows(numeric, [{"text": "a", "label": 1}, {"text": "b", "label": 0}])
    with pytest.raises(UserError, match=r"numeric\.parquet: row 1: field 'label': expected a string, got a number"):
        load_rows(numeric, "classification")


def test_file_level_errors(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_rows(tmp_path / "nope.jsonl", "classification")
    with pytest.raises(UserError, match="expected a .jsonl or .parquet file"):
        (tmp_path / "rows.csv").write_text("text,label\n")
        load_rows(tmp_path / "rows.csv", "classification")
    with pytest.raises(UserError, match="unknown task type 'regression'"):
        load_rows(tmp_path / "rows.csv", "regression")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.text(min_size=1).filter(str.strip), st.sampled_from(LABELS)), min_size=1, max_size=20))
def test_any_text_round_trips_through_jsonl(tmp_path, pairs):
    rows = [{"text": t, "label": lab} for t, lab in pairs]
    path = tmp_path / "p.jsonl"
    write_rows(path, rows)
    assert load_rows(path, "classification", LABELS) == rows
    lines = path.read_text(encoding="utf-8").split("\n")
    assert len(lines) == len(rows) + 1 and lines[-1] == ""
    assert json.loads(lines[0]) == rows[0]
