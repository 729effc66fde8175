"""The fuzz tests' runner and evidence.

`fuzz(...)` runs one hypothesis search over a surface's cases: each case must be accepted, or refused with
`taskloom.errors.UserError` (a server: an error answer) whose one-line message names the file, row or field;
anything else fails the test. Counts go to build/reliability/fuzz.json (one JSON object per line, appended
under a lock) for scripts/reliability.py, which writes RELIABILITY.md.

Tiers: every surface has a default-tier test (`tier="default"`, DEFAULT_CASES cases; `make test`; marked e2e
where a run takes more than a few seconds) and a slow-tier one (`tier="slow"`, marked slow, SLOW_CASES cases;
`make test-all`).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskloom.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "serving"))  # serve_helpers: make_adapter, TEXTS
sys.path.insert(0, str(Path(__file__).parent))  # mutations

RECORD = ROOT / "build" / "reliability" / "fuzz.json"
DEFAULT_CASES = 100
SLOW_CASES = 1000
TIERS = [pytest.param("default", id="default"), pytest.param("slow", id="slow", marks=pytest.mark.slow)]
# surfaces whose default-tier run takes more than a few seconds (a real adapter, MiniLM, a command per case)
TIERS_E2E = [
    pytest.param("default", id="default", marks=pytest.mark.e2e),
    pytest.param("slow", id="slow", marks=pytest.mark.slow),
]

ACCEPTED, REFUSED, OTHER = "accepted", "refused with UserError", "other exception"


class Refused(Exception):
    """A server surface's error answer (HTTP 4xx/5xx, a Triton error string): the counterpart of UserError."""


def record(row: dict) -> None:
    """Append one evidence row; one write under an exclusive lock, so concurrent runs never interleave."""
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
    fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
    finally:
        os.close(fd)


def one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, f"not one line: {message!r}"


@pytest.fixture
def fuzz(request):
    """fuzz(surface, strategy, check, tier, names=...) -> Counter of outcomes.

    `check(case)` returns normally (accepted) or raises UserError/Refused (refused). `names(case, message)`
    says whether the message names what it should (file, row or field). A case whose `valid` is True must be
    accepted; False must be refused."""

    def run(
        surface: str,
        strategy: st.SearchStrategy,
        check: Callable,
        tier: str,
        names: Callable[[object, str], bool],
        cases: int | None = None,
        note: str = "",
    ) -> Counter:
        n = cases or (SLOW_CASES if tier == "slow" else DEFAULT_CASES)
        counts: Counter = Counter()
        kinds: Counter = Counter()

        @settings(
            max_examples=n,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def one(case):
            valid = getattr(case, "valid", None)
            kinds[getattr(case, "kind", "?")] += 1
            try:
                check(case)
            except (UserError, Refused) as e:
                counts[REFUSED] += 1
                message = str(e)
                one_line(message)
                assert names(case, message), f"message does not name the file, row or field: {message!r}"
                assert valid is not True, f"a valid input was refused: {message}"
                return
            except Exception:
                counts[OTHER] += 1
                raise
            counts[ACCEPTED] += 1
            assert valid is not False, f"an invalid input was accepted: {case!r}"

        one()
        tried = sum(counts.values())
        assert tried >= n, f"only {tried} of {n} cases ran"
        node = request.node.nodeid
        marker = "-m slow " if tier == "slow" else ""
        record(
            {
                "surface": surface,
                "tier": tier,
                "cases": tried,
                "accepted": counts[ACCEPTED],
                "refused": counts[REFUSED],
                "other": counts[OTHER],
                "mutations": dict(sorted(kinds.items())),
                "note": note,
                "test": node,
                "command": f".venv/bin/pytest -q {marker}'{node}'",
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        return counts

    return run


@pytest.fixture(scope="session")
def real_adapters(tmp_path_factory) -> dict[str, Path]:
    """Two real PEFT LoRA folders on MiniLM as `taskloom train` writes them: 'senti' (with a head), 'qa'."""
    from serve_helpers import make_adapter

    root = tmp_path_factory.mktemp("adapters")
    return {
        "senti": make_adapter(root, "senti", 0, labels=["fresh", "rotten"]),
        "qa": make_adapter(root, "qa", 1),
    }
