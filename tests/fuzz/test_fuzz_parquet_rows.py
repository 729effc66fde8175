"""Parquet task rows (taskloom.data.rows): real catalog rows of each task type written with pyarrow, one row
mutated field by field (a column of mixed values is stored as strings), or the file's bytes damaged."""

from __future__ import annotations

import pytest
from conftest import TIERS
from hypothesis import strategies as st
from mutations import Case, byte_mutations
from rows_cases import row_case, to_parquet

from taskloom.artifacts import sha256_file
from taskloom.data.rows import load_rows, read_rows


@st.composite
def parquet_case(draw) -> Case:
    case = draw(row_case())
    data = to_parquet(case.doc)
    if case.kind != "unchanged" and draw(st.integers(min_value=0, max_value=3)) == 0:
        kind, data = draw(byte_mutations(data))
        case = Case(kind, (), case.doc, extra=case.extra)
    case.data = data
    return case


@pytest.mark.parametrize("tier", TIERS)
def test_parquet_rows(fuzz, tmp_path, tier):
    path = tmp_path / "eval.parquet"

    def check(case):
        path.write_bytes(case.data)
        before = sha256_file(path)
        t, labels = case.extra["type"], case.extra["labels"]
        try:
            read = read_rows(path, t, labels)
            for n, message in read.bad:
                assert message.startswith(f"{path}: row {n}: ") and "\n" not in message, message
            assert load_rows(path, t, labels)
        finally:
            assert sha256_file(path) == before

    fuzz("Parquet rows", parquet_case(), check, tier, names=lambda case, msg: msg.startswith(f"{path}: "))
