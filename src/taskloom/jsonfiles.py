"""Reading JSON and JSONL files (one JSON value per line): configs, task rows, training logs, monitor outputs.

One reader of each, so every file taskloom reads gets the same rules and the same one-line errors
naming the file (and for JSONL the row: its 1-based line number). The live request log is read
incrementally by `taskloom.requestlog`, not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from taskloom.errors import UserError


def read_json(path: str | Path, label: str | None = None) -> dict:
    """A JSON object from `path`, or UserError naming the file (and `label`, the input it belongs to)."""
    path = Path(path)
    where = f" in {label}" if label else ""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise UserError(f"{path}: not valid JSON ({e.__class__.__name__}){where}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object{where}")
    return doc


def read_numbered(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, value) for every non-blank line; a UTF-8 byte-order mark is allowed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        row = path.read_bytes()[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: row {row}: not UTF-8 text") from None
    out = []
    for n, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a string
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: row {n}: malformed JSON: {e.msg} (column {e.colno})") from None
        except RecursionError:
            raise UserError(f"{path}: row {n}: malformed JSON: nested too deeply") from None
    return out


def read_jsonl(path: str | Path) -> list:
    """Every value of a JSONL file, in order (blank lines skipped)."""
    return [value for _n, value in read_numbered(path)]
