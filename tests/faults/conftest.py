"""Fault tests: `evidence` records each passed case as one line of build/reliability/faults.json."""

from __future__ import annotations

import pytest
from faultkit import record


@pytest.fixture
def evidence(request):
    """evidence(surface, fault, cases, outcome): called at the end of a test, after its assertions."""

    def write(surface: str, fault: str, cases: int, outcome: str) -> None:
        slow = request.node.get_closest_marker("slow") is not None
        record(request.node.nodeid, surface, fault, cases, outcome, slow=slow)

    return write
