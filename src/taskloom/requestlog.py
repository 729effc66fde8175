"""The request log: what the server was asked, one JSON line per input text, read by the drift monitor.

Two row versions, both read by `LogReader`:

    v1 (no "v" field; written by `append`, e.g. the Python client):
    {"ts": 1718000000.123, "task": "rt-sentiment", "text": "a fine film"}

    v2 (written by the Triton model itself, `taskloom.serve.requests_log`):
    {"v": 2, "ts": 1718000000.123, "task": "rt-sentiment", "model": "taskloom", "version": "3",
     "adapter": "rt-sentiment", "label": "fresh", "probs": [0.91, 0.09], "text": "a fine film"}

`ts` is seconds since the epoch (UTC), `task` the task the request was for. In v1 `text` (the input)
is required; in v2 every field after `task` is optional: `text` only when the deployment opts in,
`label` and `probs` only when a classification head answered, `adapter` null for the base model.

Writers call

    from taskloom.requestlog import append
    append("runs/requests.jsonl", "rt-sentiment", texts)          # v1 rows
    append_rows("runs/requests.jsonl", rows, max_bytes=64 << 20)  # any rows (dicts), with rotation

The lines of one call go out in one `write` on a file opened for appending, under an exclusive
lock, so concurrent writers never interleave half lines. With `max_bytes`, a write that would take
the file past it first rotates the log: the file is renamed to `<log>.1` (replacing the previous
one) and a new file is started, so the log and its one predecessor hold at most about 2 × max_bytes.
A writer that waited for the lock on a file that was rotated meanwhile reopens the new one.

`LogReader` follows the file: each `poll()` returns the complete new lines and stops before an
unfinished last one, so a reader never sees half a request and resumes where it stopped. It keeps
the file open, so it follows a rotation: when the path names a new file (another inode), it first
reads what is left of the old one, then starts at byte 0 of the new one; a file truncated in place
(shrunk below what was read) is read again from byte 0.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from taskloom.errors import UserError

FIELDS = ("ts", "task", "text")  # v1: all three required
VERSION = 2  # the row version `append_rows` callers write with "v"
V2_OPTIONAL = ("model", "version", "adapter", "label", "probs", "text")
ROTATED_SUFFIX = ".1"


def _timestamp(ts) -> float:
    if ts is None:
        return time.time()
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise UserError("request log: a datetime ts needs a time zone (use timezone.utc)")
        return ts.timestamp()
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise UserError(f"request log: ts must be seconds since the epoch, got {ts!r}")
    return float(ts)


def rotated_path(path: str | os.PathLike) -> Path:
    """Where a rotated log goes: <log>.1."""
    path = Path(path)
    return path.with_name(path.name + ROTATED_SUFFIX)


def append(path: str | os.PathLike, task: str, texts, ts=None) -> int:
    """Append one v1 line per text for `task` (ts: epoch seconds or an aware datetime; default now). Returns the count."""
    if not isinstance(task, str) or not task.strip():
        raise UserError(f"request log: task must be a non-empty string, got {task!r}")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserError(f"request log: text {i} for task '{task}' must be a string, got {type(t).__name__}")
    stamp = _timestamp(ts)
    return append_rows(path, [{"ts": stamp, "task": task, "text": t} for t in texts])


def append_rows(path: str | os.PathLike, rows: list[dict], max_bytes: int | None = None) -> int:
    """Append `rows` (JSON-serialisable dicts) as lines in one locked write; rotate first when the file
    would grow past `max_bytes` (None or 0: never). Returns the number of rows written."""
    if not rows:
        return 0
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                continue  # rotated away between open and lock: open the new one
            if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
                continue  # another writer rotated it while this one waited for the lock
            if max_bytes and mine.st_size > 0 and mine.st_size + len(data) > max_bytes:
                os.replace(path, rotated_path(path))  # under the old file's lock: one writer rotates
                continue
            view = memoryview(data)
            while view:  # one write normally; loop only if the kernel takes less
                view = view[os.write(fd, view) :]
            return len(rows)
        finally:
            os.close(fd)  # closing releases the lock


def _finite_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and math.isfinite(x)


def parse_line(line: str, where: str) -> dict:
    """One log line → {"ts": float, "task": str, "text": str | None, ...the v2 fields present}, or a
    UserError naming `where` (file: line N). v1 rows always have a text; v2 rows may not."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise UserError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    v = row.get("v", 1)
    if v not in (1, VERSION) or isinstance(v, bool):
        raise UserError(f"{where}: row version {v!r} is not one this taskloom reads (1 or {VERSION})")
    for k in FIELDS if v == 1 else ("ts", "task"):
        if k not in row:
            raise UserError(f"{where}: missing field '{k}'")
    if not _finite_number(row["ts"]):
        raise UserError(f"{where}: field 'ts' must be seconds since the epoch, got {row['ts']!r}")
    if not isinstance(row["task"], str) or not row["task"]:
        raise UserError(f"{where}: field 'task' must be a non-empty string")
    text = row.get("text")
    if (v == 1 or text is not None) and not isinstance(text, str):
        raise UserError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    out = {"ts": float(row["ts"]), "task": row["task"], "text": text}
    if v == 1:
        return out
    for k in ("model", "adapter", "label"):
        if row.get(k) is not None and not isinstance(row[k], str):
            raise UserError(f"{where}: field '{k}' must be a string or null, got {type(row[k]).__name__}")
    if row.get("version") is not None and not isinstance(row["version"], (str, int)):
        raise UserError(f"{where}: field 'version' must be a string or an integer")
    probs = row.get("probs")
    if probs is not None and not (isinstance(probs, list) and all(_finite_number(p) for p in probs)):
        raise UserError(f"{where}: field 'probs' must be a list of finite numbers")
    out.update({k: row.get(k) for k in V2_OPTIONAL if k != "text"})
    out["v"] = VERSION
    return out


class LogReader:
    """Follow a request log across rotations: `poll()` → the complete lines written since the last poll, parsed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0  # bytes consumed of the open file (always at a line boundary)
        self.lineno = 0  # lines consumed of the open file
        self.rotations = 0  # rotations (new file or truncation) followed so far
        self._file: BinaryIO | None = None
        self._id: tuple[int, int] | None = None  # (device, inode) of the open file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None:
            self.close()

    def _open(self) -> None:
        self.close()
        self._file = open(self.path, "rb")  # noqa: SIM115 (kept open to follow a rotation; closed in close())
        st = os.fstat(self._file.fileno())
        self._id, self.offset, self.lineno = (st.st_dev, st.st_ino), 0, 0

    def poll(self, final: bool = False) -> list[dict]:
        """New complete lines; with `final` (batch reading, the writer is done) an unterminated last line too."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None and self._file is None:
            raise UserError(f"{self.path}: no such request log")
        rows: list[dict] = []
        if self._file is None:
            self._open()
        elif st is not None and (st.st_dev, st.st_ino) != self._id:  # rotated: finish the old file, then the new one
            rows = self._read(True, f"{self.path} (rotated)")
            self._open()
            self.rotations += 1
        elif st is not None and st.st_size < self.offset:  # truncated in place: read it again from the start
            self.offset, self.lineno = 0, 0
            self.rotations += 1
        return rows + self._read(final, str(self.path))  # a path gone mid-rotation: what the open file holds

    def _read(self, final: bool, name: str) -> list[dict]:
        assert self._file is not None, "poll() opens the file first"
        self._file.seek(self.offset)
        chunk = self._file.read()
        size = len(chunk)
        if not chunk:
            return []
        if final and not chunk.endswith(b"\n"):
            chunk += b"\n"
        end = chunk.rfind(b"\n")
        if end < 0:  # not even one complete line yet
            return []
        rows = []
        for raw in chunk[: end + 1].split(b"\n")[:-1]:
            self.lineno += 1
            where = f"{name}: line {self.lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}: not UTF-8 text") from None
            if line.strip():
                rows.append(parse_line(line, where))
        self.offset += min(size, end + 1)
        return rows
