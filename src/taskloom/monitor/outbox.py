"""The monitor's outbox: alarms waiting for delivery, kept in alarms.jsonl and retried with backoff.

An alarm is written to disk as "pending" before its first send, so a monitor killed while sending
sends it again on restart with the same event id (its idempotency key): the receiver answers
"duplicate" and starts nothing twice. An alarm the receiver could not take ("undelivered": refused
connection, timeout, 5xx) stays in the outbox and is tried again at growing intervals while the
monitor runs, and first thing on its next start.
"""

from __future__ import annotations

# statuses of an alarm still to be sent; "delivered" and "duplicate" are done, "rejected" (the
# receiver refused the event itself: bad signature, stale) and "not_sent" (no webhook) are final
WAITING = ("pending", "undelivered")
FIRST_RETRY_S = 1.0
MAX_RETRY_S = 60.0


def waiting(alarm: dict) -> bool:
    return alarm.get("delivery", {}).get("status") in WAITING


def pending(alarm: dict, now: str) -> dict:
    """The delivery record an alarm carries on disk before its first send."""
    return {"status": "pending", "http_status": None, "run_id": None, "attempts": 0, "error": None, "queued_at": now}


def next_try(tries: int, now: float, first: float = FIRST_RETRY_S, cap: float = MAX_RETRY_S) -> float:
    """When to try again after `tries` failed rounds: first, 2·first, 4·first, ... at most `cap` apart."""
    return now + min(cap, first * 2 ** max(0, tries - 1))


def due(alarms: list[dict], now: float) -> list[dict]:
    """The waiting alarms whose next try is at or before `now`, oldest first."""
    return [a for a in alarms if waiting(a) and float(a["delivery"].get("next_try_ts") or 0) <= now]
