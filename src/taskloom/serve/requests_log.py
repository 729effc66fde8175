"""The request log written by the Triton model itself: one v2 row (`taskloom.requestlog`) per sampled text served.

In a cluster nobody runs the Python client's `request_log`, so the model that answers writes what
the drift monitor reads: task, model, version, adapter, the head's label and probabilities (when a
classification head answered) and, only when the deployment opts in, the text itself.

Configuration: the environment of the Triton server, which its python-backend stubs inherit
(the chart sets it from `triton.requestLog`; locally `TASKLOOM_REQUEST_LOG=/abs/requests.jsonl taskloom serve ...`):

    TASKLOOM_REQUEST_LOG              absolute path of the JSONL log; unset or empty: nothing is logged
    TASKLOOM_REQUEST_LOG_SAMPLE_RATE  share of the served texts logged, 0..1 (default 1)
    TASKLOOM_REQUEST_LOG_TEXT         true: log the input text too (default false: no user text at rest)
    TASKLOOM_REQUEST_LOG_MAX_BYTES    rotate the log to <log>.1 before it grows past this (default 64 MiB; 0: never)

Why the environment and not config.pbtxt parameters: the log belongs to the deployment (which volume,
whether user text may be stored), not to a model version. config.pbtxt is rewritten from each
version's manifest on every deploy and rollback; the environment is set once per server, and every
model of that server writes the same log (each row names its model and version). A bad value stops
the model from loading with one line in Triton's log; a failing write (full or read-only volume)
never fails a request: it is reported once on stderr (Triton's log) and the rows are dropped.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from taskloom.errors import UserError
from taskloom.requestlog import VERSION, append_rows

ENV_PATH = "TASKLOOM_REQUEST_LOG"
ENV_SAMPLE_RATE = "TASKLOOM_REQUEST_LOG_SAMPLE_RATE"
ENV_TEXT = "TASKLOOM_REQUEST_LOG_TEXT"
ENV_MAX_BYTES = "TASKLOOM_REQUEST_LOG_MAX_BYTES"
DEFAULT_MAX_BYTES = 64 << 20
PROBS_DIGITS = 6  # probabilities rounded in the log: float32 carries about 7 significant digits
TRUE, FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class LogSettings:
    """Where and what the server logs."""

    path: Path
    sample_rate: float = 1.0
    include_text: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if not self.path.is_absolute():
            raise UserError(f"{ENV_PATH}={self.path}: give an absolute path (the server runs in its own folder)")
        if not (isinstance(self.sample_rate, (int, float)) and 0.0 <= self.sample_rate <= 1.0):
            raise UserError(f"{ENV_SAMPLE_RATE}={self.sample_rate}: must be a number between 0 and 1")
        if self.max_bytes < 0:
            raise UserError(f"{ENV_MAX_BYTES}={self.max_bytes}: must be 0 (never rotate) or a number of bytes")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LogSettings | None:
        """The settings in `env` (default os.environ); None when no log path is set."""
        env = os.environ if env is None else env
        path = env.get(ENV_PATH, "").strip()
        if not path:
            return None
        rate_s = env.get(ENV_SAMPLE_RATE, "1").strip() or "1"
        try:
            rate = float(rate_s)
        except ValueError:
            raise UserError(f"{ENV_SAMPLE_RATE}={rate_s}: must be a number between 0 and 1") from None
        text = env.get(ENV_TEXT, "false").strip().lower()
        if text not in TRUE + FALSE:
            raise UserError(f"{ENV_TEXT}={text}: use true or false")
        size_s = env.get(ENV_MAX_BYTES, str(DEFAULT_MAX_BYTES)).strip() or str(DEFAULT_MAX_BYTES)
        try:
            size = int(size_s)
        except ValueError:
            raise UserError(f"{ENV_MAX_BYTES}={size_s}: must be a whole number of bytes") from None
        return cls(Path(path), rate, text in TRUE, size)


@dataclass
class Served:
    """One request answered: its task and adapter, its texts and, when a head answered, labels and probabilities."""

    task: str
    adapter: str | None
    texts: list[str]
    labels: list[str] | None = None
    probs: np.ndarray | None = None


class ServedLog:
    """Turns served requests into sampled v2 rows and appends them (one locked write per batch)."""

    def __init__(self, settings: LogSettings, model: str, version: str, rng: random.Random | None = None):
        self.settings, self.model, self.version = settings, model, str(version)
        self.rng = rng or random.Random()
        self.written = 0  # rows appended by this process
        self.dropped = 0  # rows lost to a failing write
        self._warned = False

    @classmethod
    def from_env(cls, model: str, version: str, env: Mapping[str, str] | None = None) -> ServedLog | None:
        settings = LogSettings.from_env(env)
        return None if settings is None else cls(settings, model, version)

    def rows(self, served: list[Served], ts: float | None = None) -> list[dict]:
        """The sampled rows for `served` (each text kept with probability sample_rate)."""
        stamp = time.time() if ts is None else ts
        rate, out = self.settings.sample_rate, []
        for s in served:
            for i, text in enumerate(s.texts):
                if rate < 1.0 and not self.rng.random() < rate:
                    continue
                row: dict = {
                    "v": VERSION,
                    "ts": stamp,
                    "task": s.task,
                    "model": self.model,
                    "version": self.version,
                    "adapter": s.adapter,
                }
                if s.labels is not None:
                    row["label"] = s.labels[i]
                if s.probs is not None:
                    row["probs"] = [round(float(p), PROBS_DIGITS) for p in s.probs[i]]
                if self.settings.include_text:
                    row["text"] = text
                out.append(row)
        return out

    def record(self, served: list[Served]) -> int:
        """Append the sampled rows of one batch; returns how many were written (0 when the write failed)."""
        rows = self.rows(served)
        if not rows:
            return 0
        try:
            n = append_rows(self.settings.path, rows, max_bytes=self.settings.max_bytes or None)
        except OSError as e:
            self.dropped += len(rows)
            if not self._warned:
                self._warned = True
                print(
                    f"taskloom: request log {self.settings.path}: cannot write ({type(e).__name__}: {e}); "
                    "requests are still served, their rows are dropped",
                    file=sys.stderr,
                    flush=True,
                )
            return 0
        self.written += n
        return n
