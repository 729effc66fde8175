"""Task rows on disk: JSONL (one object per line) or Parquet, checked field by field on load.

Every bad row becomes one line naming the file, the row (the 1-based line number for JSONL, the
1-based row for Parquet) and the field, so a user can open the file and fix it. Bad rows are
malformed JSON, invalid UTF-8, NUL bytes, nesting deeper than `MAX_DEPTH`, a missing, null or
mistyped field, blank text or an unknown label. A few in a large file are normal in real corpora:
up to a task's allowance (`validation.bad_rows`, default 1 % of the file) they are dropped and
counted; more stop the read with the first one's line. Inputs are only ever read.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from taskloom.artifacts import write_bytes
from taskloom.errors import UserError
from taskloom.tasks.types import TASK_TYPES, TaskType

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
MAX_BAD_SHARE = 0.01  # default share of bad rows dropped with a warning (task.yaml validation.bad_rows.max_share)
MAX_DEPTH = 32  # deepest nesting of lists and objects in a row; real rows need 3


class Allowance(Protocol):
    """What a task allows of a kind of bad row (taskloom.specs.SharePolicy has this shape)."""

    @property
    def severity(self) -> str: ...

    @property
    def max_share(self) -> float: ...


@dataclass(frozen=True)
class DefaultAllowance:
    severity: str = "error"
    max_share: float = MAX_BAD_SHARE


@dataclass
class RowsRead:
    """A file's rows: the good ones with their numbers, and one line naming file and row per bad one."""

    path: Path
    rows: list[tuple[int, dict]]
    bad: list[tuple[int, str]]

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.bad)

    @property
    def bad_share(self) -> float:
        return len(self.bad) / self.total if self.total else 0.0

    def allowed(self, allowance: Allowance) -> bool:
        """Dropping the bad rows is acceptable: severity warning/off, or at most `max_share` of the rows."""
        return not self.bad or allowance.severity != "error" or self.bad_share <= allowance.max_share

    def too_many(self, allowance: Allowance) -> str:
        """The one-line error when the bad rows are more than `allowance` tolerates."""
        return (
            f"{self.bad[0][1]} ({len(self.bad)} of {self.total} rows bad, {self.bad_share:.1%}; "
            f"validation.bad_rows allows {allowance.max_share:.1%})"
        )


def load_rows(
    path: str | Path, task_type: str, labels: list[str] | None = None, bad_rows: Allowance | None = None
) -> list[dict]:
    """Read and check every row; with `labels`, a classification label outside them is a bad row.

    Bad rows within `bad_rows` (default: 1 %) are dropped; more stop here with the first one's line."""
    return [row for _n, row in load_numbered_rows(path, task_type, labels, bad_rows)]


def load_numbered_rows(
    path: str | Path, task_type: str, labels: list[str] | None = None, bad_rows: Allowance | None = None
) -> list[tuple[int, dict]]:
    """Like `load_rows`, with each row's number (JSONL: its line; Parquet: its 1-based row)."""
    read = read_rows(path, task_type, labels)
    allowance = bad_rows or DefaultAllowance()
    if not read.allowed(allowance):
        raise UserError(read.too_many(allowance))
    if not read.rows:
        raise UserError(f"{read.path}: no usable rows ({read.bad[0][1]})")
    return read.rows


def read_rows(path: str | Path, task_type: str, labels: list[str] | None = None) -> RowsRead:
    """Every row checked on its own: a problem with the file raises UserError, a bad row is recorded."""
    path = Path(path)
    if task_type not in TASK_TYPES:
        raise UserError(f"{path}: unknown task type {task_type!r}: use one of [{', '.join(TASK_TYPES)}]")
    try:
        found, folder = path.exists(), path.is_dir()
    except OSError as e:  # e.g. a name too long for the file system
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not found:
        raise UserError(f"{path}: file not found")
    if folder:
        raise UserError(f"{path}: is a folder, expected a JSONL or Parquet file")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        numbered = _read_jsonl(path)
    elif suffix in PARQUET_SUFFIXES:
        numbered = _read_parquet(path)
    else:
        raise UserError(f"{path}: expected a .jsonl or .parquet file, got {path.name}")
    if not numbered:
        raise UserError(f"{path}: no rows (the file is empty)")
    read = RowsRead(path, [], [])
    for n, row in numbered:
        try:
            if isinstance(row, _Unreadable):
                raise UserError(f"{path}: row {n}: {row.reason}")
            if _deeper_than(row, MAX_DEPTH):
                raise UserError(f"{path}: row {n}: nested more than {MAX_DEPTH} levels deep")
            _check_row(path, n, row, TASK_TYPES[task_type], labels)
        except UserError as e:
            read.bad.append((n, str(e)))
        except RecursionError:  # a check that walks the value; the depth limit should make this unreachable
            read.bad.append((n, f"{path}: row {n}: nested too deeply to check"))
        else:
            read.rows.append((n, row))
    return read


@dataclass
class _Unreadable:
    reason: str


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    """(line number, value or _Unreadable) per non-blank line. Lines are decoded and parsed one by one
    (not by taskloom.jsonfiles, which stops at the first bad line) so one bad row does not lose the file."""
    out: list[tuple[int, Any]] = []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):  # not splitlines(): U+2028 may sit in a string
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            out.append((n, _Unreadable("not UTF-8 text")))
            continue
        if not line.strip():
            continue
        if "\x00" in line:
            out.append((n, _Unreadable("contains a NUL byte")))
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            out.append((n, _Unreadable(f"malformed JSON: {e.msg} (column {e.colno})")))
        except RecursionError:
            out.append((n, _Unreadable(f"malformed JSON: nested more than {MAX_DEPTH} levels deep")))
    return out


def _deeper_than(value: object, limit: int) -> bool:
    """True when lists/objects nest more than `limit` levels (iterative: a deep value cannot overflow it)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children = list(v.values())
        elif isinstance(v, (list, tuple)):
            children = list(v)
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def _read_parquet(path: Path) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        return list(enumerate(table.to_pylist(), start=1))
    except RecursionError:
        raise UserError(f"{path}: not a readable Parquet file: nested too deeply") from None
    except Exception as e:  # pyarrow raises several types for a damaged or foreign file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable Parquet file: {reason}") from None


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
    for field in task_type.text_fields:
        if isinstance(row.get(field), str) and not row[field].strip():
            raise UserError(f"{where}: field {field!r}: is blank")
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
