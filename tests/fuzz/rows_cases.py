"""Row cases shared by the JSONL and Parquet surfaces: real catalog rows of every task type, one row mutated."""

from __future__ import annotations

import functools
import io
import json

from hypothesis import strategies as st
from mutations import DEEP, Case, doc_mutations

from taskloom.tasks.catalog import build_task

TASKS = {  # catalog task -> its type
    "rt-sentiment": "classification",
    "lee-similarity": "pair_similarity",
    "chatterbot-qa": "retrieval",
    "chatterbot-gen": "generation",
}
ROWS = 20


@functools.cache
def real_rows(task: str) -> tuple[list[dict], list[str] | None]:
    spec, train, _eval = build_task(task)
    return [dict(r) for r in train[:ROWS]], spec.get("labels")


@st.composite
def row_case(draw) -> Case:
    """A file's rows with one row changed (or none): `extra` holds task, type, labels and the row number."""
    task = draw(st.sampled_from(sorted(TASKS)))
    rows, labels = real_rows(task)
    at = draw(st.integers(min_value=0, max_value=len(rows) - 1))
    info = {"task": task, "type": TASKS[task], "labels": labels, "row": at + 1}
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        return Case("unchanged", (), rows, valid=True, extra=info)
    m = draw(doc_mutations(rows[at]))
    return Case(m.kind, m.path, [*rows[:at], m.doc, *rows[at + 1 :]], extra=info)


NESTED = 40  # levels: deeper than rows.MAX_DEPTH, shallow enough for pyarrow


def _real(value):
    """The DEEP placeholder as real nested lists (Parquet keeps structure, not text)."""
    if value == DEEP:
        out: list = ["x"]
        for _ in range(NESTED):
            out = [out]
        return out
    if isinstance(value, dict):
        return {k: _real(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_real(v) for v in value]
    return value


def to_parquet(rows: list) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [_real(r) if isinstance(r, dict) else {"value": json.dumps(r)} for r in rows]
    names = list(dict.fromkeys(k for r in rows for k in r if isinstance(k, str)))
    columns = {}
    for name in names:
        values = [r.get(name) for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowException, OverflowError, TypeError, ValueError):  # mixed types: keep them, as text
            columns[name] = pa.array([None if v is None else json.dumps(v, default=str) for v in values])
    table = pa.table(columns) if columns else pa.table({"x": [1] * len(rows)})
    buf = io.BytesIO()
    try:
        pq.write_table(table, buf)
    except pa.ArrowException:  # e.g. an empty struct Parquet cannot hold: keep the values, as text
        as_text = {
            name: pa.array([None if v is None else json.dumps(v, default=str) for v in table[name].to_pylist()])
            if pa.types.is_nested(table[name].type)
            else table[name]
            for name in table.column_names
        }
        buf = io.BytesIO()
        pq.write_table(pa.table(as_text), buf)
    return buf.getvalue()
