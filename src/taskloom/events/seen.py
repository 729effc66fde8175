"""The event ids a gateway or receiver has accepted, kept while a replay of them could still be fresh.

In memory, and with `path` also in an append-only JSON-lines file (one {"id", "time", "run"} per
accepted event, flushed and fsynced before the answer goes out), so a restarted process still refuses
a replay of an event it accepted before the restart. An id is written only once its event was delivered:
a kill between delivery and the write can let one retry through (at least once), never lose an event.
On start the file is read, ids older than the replay window dropped, and the rest written back whole.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from taskloom.artifacts import write_text
from taskloom.errors import UserError

_IN_FLIGHT = object()  # claimed by a request still being delivered


class SeenIds:
    """id -> (event time in epoch s, value); `claim` before delivering, then `accept` or `release`.
    Not thread-safe on its own: the caller holds its lock around each call."""

    def __init__(self, max_age: float, path: str | Path | None = None):
        self.max_age = float(max_age)
        self.path = Path(path) if path is not None else None
        self._ids: dict[str, tuple[float, object]] = {}
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        if self.path.is_dir():
            raise UserError(f"--state {self.path}: is a folder, expected a file")
        if self.path.exists():
            cutoff = time.time() - self.max_age
            with open(self.path, encoding="utf-8", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    if not line.endswith("\n"):
                        break  # the last write was cut short by a kill: that event was not answered
                    try:
                        row = json.loads(line)
                        ident, stamp, value = str(row["id"]), float(row["time"]), row.get("run")
                    except (ValueError, KeyError, TypeError):
                        raise UserError(
                            f"{self.path}:{n}: not a seen-event record; remove the file to start afresh"
                        ) from None
                    if stamp >= cutoff:
                        self._ids[ident] = (stamp, value)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        records = "".join(json.dumps({"id": k, "time": t, "run": v}) + "\n" for k, (t, v) in self._ids.items())
        write_text(self.path, records, digest=False)  # compacted: only what can still be replayed

    def __contains__(self, ident: str) -> bool:
        return ident in self._ids

    def value(self, ident: str):
        """What `accept` stored for `ident` (None while it is still in flight)."""
        value = self._ids[ident][1]
        return None if value is _IN_FLIGHT else value

    def forget_older_than(self, cutoff: float) -> None:
        for k in [k for k, (t, _) in self._ids.items() if t < cutoff]:
            del self._ids[k]

    def claim(self, ident: str, stamp: float) -> None:
        """Hold `ident` while it is delivered: a concurrent copy is a replay."""
        self._ids[ident] = (stamp, _IN_FLIGHT)

    def release(self, ident: str) -> None:
        """Not delivered: a retry with the same id may go through."""
        self._ids.pop(ident, None)

    def accept(self, ident: str, stamp: float, value=None) -> None:
        """Delivered: remembered, and on disk before the sender hears so."""
        self._ids[ident] = (stamp, value)
        if self.path is not None:
            line = json.dumps({"id": ident, "time": stamp, "run": value}) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
