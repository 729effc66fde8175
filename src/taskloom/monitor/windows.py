"""Tumbling time windows per task over the request log.

A window is [start, start + size) with start a multiple of `size` seconds since the epoch, so every
task shares the same boundaries (the alarm policy compares the tasks of one window with each other)
and a restarted monitor forms the same windows again. A window closes once the log's time (the
largest ts seen, or the wall clock in follow mode) has passed its end by `lateness` seconds; a
request that arrives for a window already closed is counted as late and dropped.

A window keeps what its rows carry: the texts (client rows always, server rows when the deployment
logs text) for embedding detectors, and the served head's labels (server rows, when a head answered)
for a labels detector; `n` counts every request whatever it carries.

    windows = TumblingWindows(size=300)
    for row in reader.poll(): windows.add(row)
    for w in windows.close(until=time.time()): ...
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone


def iso(ts: float) -> str:
    """UTC ISO time of epoch seconds, to the second (window starts are whole seconds in practice)."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Window:
    task: str
    start: float
    end: float
    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    probs: list[list[float]] = field(default_factory=list)  # the served head's answers (v2 rows)
    n: int = 0  # requests, with or without text or label


class TumblingWindows:
    """Open windows keyed by (task, start); `close(until)` hands back those that are over, oldest first."""

    def __init__(self, size: float, lateness: float = 0.0):
        if not (isinstance(size, (int, float)) and math.isfinite(size) and size > 0):
            raise ValueError(f"window size must be a positive number of seconds, got {size!r}")
        self.size, self.lateness = float(size), float(lateness)
        self.open: dict[tuple[str, float], Window] = {}
        self.closed_until = -math.inf  # windows ending at or before this are closed
        self.max_ts = -math.inf
        self.late = 0

    def start_of(self, ts: float) -> float:
        return math.floor(ts / self.size) * self.size

    def add(self, row: dict) -> bool:
        """Put one request {"ts", "task", "text", "label"?, "probs"?} in its window; False (and counted) when
        that window is closed."""
        start = self.start_of(row["ts"])
        if start + self.size <= self.closed_until:
            self.late += 1
            return False
        self.max_ts = max(self.max_ts, row["ts"])
        key = (row["task"], start)
        if key not in self.open:
            self.open[key] = Window(row["task"], start, start + self.size)
        w = self.open[key]
        w.n += 1
        if row.get("text") is not None:
            w.texts.append(row["text"])
        if row.get("label") is not None:
            w.labels.append(row["label"])
        if row.get("probs") is not None:
            w.probs.append(row["probs"])
        return True

    def close(self, until: float | None = None) -> list[Window]:
        """Windows whose end + lateness <= max(until, largest ts seen), sorted by (start, task)."""
        now = self.max_ts if until is None else max(until, self.max_ts)
        cutoff = self.start_of(now - self.lateness)  # every window ending at or before it is over
        return self._pop(lambda w: w.end <= cutoff, cutoff)

    def flush(self) -> list[Window]:
        """Every open window (end of a batch: nothing more will come)."""
        return self._pop(lambda w: True, math.inf)

    def _pop(self, done, cutoff: float) -> list[Window]:
        out = sorted((w for w in self.open.values() if done(w)), key=lambda w: (w.start, w.task))
        for w in out:
            del self.open[(w.task, w.start)]
        self.closed_until = max(self.closed_until, cutoff)
        return out
