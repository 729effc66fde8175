"""The monitor's outbox rules, in-process: what waits, when it is tried again."""

from __future__ import annotations

from taskloom.monitor import outbox


def test_backoff_doubles_up_to_the_cap():
    waits = [outbox.next_try(n, 100.0, first=1.0, cap=8.0) - 100.0 for n in range(1, 7)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_only_waiting_alarms_that_are_due_are_tried():
    alarms = [
        {"key": "a", "delivery": outbox.pending({}, "t")},
        {"key": "b", "delivery": {"status": "undelivered", "next_try_ts": 50.0}},
        {"key": "c", "delivery": {"status": "undelivered", "next_try_ts": 500.0}},
        {"key": "d", "delivery": {"status": "delivered"}},
        {"key": "e", "delivery": {"status": "duplicate"}},
        {"key": "f", "delivery": {"status": "rejected"}},
        {"key": "g", "delivery": {"status": "not_sent"}},
    ]
    assert [a["key"] for a in outbox.due(alarms, 100.0)] == ["a", "b"]
    assert [a["key"] for a in outbox.due(alarms, 1000.0)] == ["a", "b", "c"]
