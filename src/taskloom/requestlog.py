"""The request log: what the server was asked, one JSON line per input text, read by the drift monitor.

    {"ts": 1718000000.123, "task": "rt-sentiment", "text": "a fine film"}

`ts` is seconds since the epoch (UTC), `task` the task the request was for, `text` the input.
Writers (the client side of Triton, or a proxy in front of it) call

    from taskloom.requestlog import append
    append("runs/requests.jsonl", "rt-sentiment", texts)

The lines of one call go out in one `write` on a file opened for appending, under an exclusive
lock, so concurrent writers never interleave half lines. `LogReader` follows the file: each
`poll()` returns the complete new lines and stops before an unfinished last one, so a reader never
sees half a request and resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

from taskloom.errors import UserError

FIELDS = ("ts", "task", "text")


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


def append(path: str | os.PathLike, task: str, texts, ts=None) -> int:
    """Append one line per text for `task` (ts: epoch seconds or an aware datetime; default now). Returns the count."""
    if not isinstance(task, str) or not task.strip():
        raise UserError(f"request log: task must be a non-empty string, got {task!r}")
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise UserError(f"request log: text {i} for task '{task}' must be a string, got {type(t).__name__}")
    if not texts:
        return 0
    stamp = _timestamp(ts)
    data = "".join(json.dumps({"ts": stamp, "task": task, "text": t}, ensure_ascii=False) + "\n" for t in texts)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data.encode("utf-8"))
        while view:  # one write normally; loop only if the kernel takes less
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)  # closing releases the lock
    return len(texts)


def parse_line(line: str, where: str) -> dict:
    """One log line → {"ts": float, "task": str, "text": str}, or a UserError naming `where` (file: line N)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for k in FIELDS:
        if k not in row:
            raise UserError(f"{where}: missing field '{k}'")
    ts = row["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise UserError(f"{where}: field 'ts' must be seconds since the epoch, got {ts!r}")
    if not isinstance(row["task"], str) or not row["task"]:
        raise UserError(f"{where}: field 'task' must be a non-empty string")
    if not isinstance(row["text"], str):
        raise UserError(f"{where}: field 'text' must be a string, got {type(row['text']).__name__}")
    return {"ts": float(ts), "task": row["task"], "text": row["text"]}


class LogReader:
    """Follow a request log: `poll()` → the complete lines written since the last poll, parsed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0  # bytes consumed (always at a line boundary)
        self.lineno = 0  # lines consumed

    def poll(self, final: bool = False) -> list[dict]:
        """New complete lines; with `final` (batch reading, the writer is done) an unterminated last line too."""
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such request log")
        size = self.path.stat().st_size
        if size < self.offset:
            raise UserError(f"{self.path}: the log shrank from {self.offset} to {size} bytes (truncated or rotated?)")
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        if final and not chunk.endswith(b"\n"):
            chunk += b"\n"
        end = chunk.rfind(b"\n")
        if end < 0:  # not even one complete line yet
            return []
        rows = []
        for raw in chunk[: end + 1].split(b"\n")[:-1]:
            self.lineno += 1
            where = f"{self.path}: line {self.lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{where}: not UTF-8 text") from None
            if line.strip():
                rows.append(parse_line(line, where))
        self.offset = min(size, self.offset + end + 1)
        return rows
