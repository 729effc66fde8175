"""JSONL task rows (taskloom.data.rows): real catalog rows of each task type, one row mutated field by field
or byte by byte (wrong types, huge fields, invalid UTF-8, NUL bytes, deep nesting, truncation)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import TIERS
from hypothesis import strategies as st
from mutations import Case, byte_mutations, deepen
from rows_cases import row_case

from taskloom.artifacts import sha256_file
from taskloom.data.rows import load_rows, read_rows


def to_lines(rows: list) -> list[bytes]:
    return [deepen(json.dumps(r, ensure_ascii=False)).encode("utf-8", "surrogatepass") for r in rows]


@st.composite
def jsonl_case(draw) -> Case:
    case = draw(row_case())
    lines = to_lines(case.doc)
    if case.kind != "unchanged" and draw(st.booleans()):  # damage the bytes of the changed row's line instead
        at = case.extra["row"] - 1
        kind, damaged = draw(byte_mutations(to_lines([case.doc[at]])[0]))
        lines[at] = damaged
        case = Case(kind, (), case.doc, extra=case.extra)
    case.data = b"\n".join(lines) + b"\n"
    return case


@pytest.mark.parametrize("tier", TIERS)
def test_jsonl_rows(fuzz, tmp_path, tier):
    path = tmp_path / "train.jsonl"

    def check(case):
        path.write_bytes(case.data)
        before = sha256_file(path)
        t, labels = case.extra["type"], case.extra["labels"]
        read = read_rows(path, t, labels)
        for n, message in read.bad:  # every dropped row is named by file and line
            assert message.startswith(f"{path}: row {n}: ") and "\n" not in message, message
        try:
            rows = load_rows(path, t, labels)
            assert rows and all(isinstance(r, dict) for r in rows)
        finally:
            assert sha256_file(path) == before  # inputs are only ever read

    def names(case, message):
        return message.startswith(f"{path}: ") and bool(re.search(r"row \d+|no rows|no usable rows", message))

    fuzz("JSONL rows", jsonl_case(), check, tier, names=names)
