"""Task rows on disk: JSONL (one object per line) or Parquet, checked field by field on load.

Every bad row becomes one `UserError` line naming the file, the row (the 1-based line number for
JSONL, the 1-based row for Parquet) and the field, so a user can open the file and fix it.
Inputs are only ever read.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from taskloom.artifacts import write_bytes
from taskloom.errors import UserError
from taskloom.jsonfiles import read_numbered
from taskloom.tasks.types import TASK_TYPES, TaskType

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)


def load_rows(path: str | Path, task_type: str, labels: list[str] | None = None) -> list[dict]:
    """Read and check every row; with `labels`, a classification label outside them is an error."""
    return [row for _n, row in load_numbered_rows(path, task_type, labels)]


def load_numbered_rows(path: str | Path, task_type: str, labels: list[str] | None = None) -> list[tuple[int, dict]]:
    """Like `load_rows`, with each row's number (JSONL: its line; Parquet: its 1-based row)."""
    path = Path(path)
    if task_type not in TASK_TYPES:
        raise UserError(f"{path}: unknown task type {task_type!r}: use one of [{', '.join(TASK_TYPES)}]")
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a JSONL or Parquet file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        numbered = read_numbered(path)
    elif suffix in PARQUET_SUFFIXES:
        numbered = _read_parquet(path)
    else:
        raise UserError(f"{path}: expected a .jsonl or .parquet file, got {path.name}")
    if not numbered:
        raise UserError(f"{path}: no rows (the file is empty)")
    for n, row in numbered:
        _check_row(path, n, row, TASK_TYPES[task_type], labels)
    return numbered


def _read_parquet(path: Path) -> list[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged or foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable Parquet file: {reason}") from None
    return list(enumerate(table.to_pylist(), start=1))


def _kind_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_row(path: Path, n: int, row, task_type: TaskType, labels: list[str] | None) -> None:
    where = f"{path}: row {n}"
    fields = task_type.fields
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with fields [{', '.join(fields)}], got {_kind_name(row)}")
    for field, kind in fields.items():
        if field not in row:
            raise UserError(f"{where}: field {field!r}: missing (a {task_type.name} row needs [{', '.join(fields)}])")
        if row[field] is None:
            raise UserError(f"{where}: field {field!r}: is null")
        _check_value(where, field, kind, row[field])
    for field, kind in task_type.optional_fields.items():
        if row.get(field) is not None:
            _check_value(where, field, kind, row[field])
    task_type.check_row(where, row, labels)


def _check_value(where: str, field: str, kind: str, value) -> None:
    if kind == "str":
        if not isinstance(value, str):
            raise UserError(f"{where}: field {field!r}: expected a string, got {_kind_name(value)} ({value!r})")
    elif kind == "score":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f"{where}: field {field!r}: expected a number in [0, 1], got {_kind_name(value)} ({value!r})"
            )
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise UserError(f"{where}: field {field!r}: {value!r} is outside [0, 1]")
    elif kind == "str_list" and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
        raise UserError(f"{where}: field {field!r}: expected a list of strings, got {_kind_name(value)}")


def write_rows(path: str | Path, rows: list[dict]) -> Path:
    """Write rows atomically (temp file + rename, sha256 beside): JSONL, or Parquet by suffix."""
    path = Path(path)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(list(rows)), buf)
        return write_bytes(path, buf.getvalue())
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return write_bytes(path, body.encode("utf-8"))
