"""An embedded webhook for signed CloudEvents: the local stand-in for the Argo Events EventSource.

    with WebhookReceiver(secret, on_event=start_retrain) as rx:
        send_event(rx.url, "taskloom.drift.detected", {"task": "rt-sentiment"}, secret)

Per request, in this order: no signature → 401; not a CloudEvent → 400; signature (HMAC-SHA256
over id, time and body, compared in constant time) wrong → 401; time older (or further ahead)
than `max_age` seconds → 401; an id already accepted → 200 {"duplicate": true} and on_event is
NOT called again; otherwise on_event(data) → 202 {"run_id", "event_id"}. An id is remembered until
its event's time is more than `max_age` back, when the time check rejects a replay anyway; with
`state` (a file) the ids outlive a restart (taskloom.events.seen).
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from taskloom.events.cloudevent import SIGNATURE_HEADER, _secret_bytes, format_time, sign, signing_input
from taskloom.events.seen import SeenIds
from taskloom.events.server import JsonServer, log


class WebhookReceiver(JsonServer):
    """Threaded HTTP server on loopback; `.url`, `.received` [{"event_id","run_id","type","source"}], `.rejected`."""

    name = "taskloom-webhook"

    def __init__(
        self,
        secret: str | bytes,
        on_event: Callable[[dict], str | None],
        host: str = "127.0.0.1",
        port: int = 0,
        max_age: float = 300.0,
        state: str | Path | None = None,
    ):
        super().__init__(host, port)
        self._secret = _secret_bytes(secret)
        self.on_event = on_event
        self.max_age = float(max_age)
        self.received: list[dict] = []
        self.rejected: list[dict] = []
        self._seen = SeenIds(self.max_age, state)  # id -> (event time, run id); on disk given `state`
        self._lock = threading.Lock()

    # -- one request ------------------------------------------------------------------------
    def _reject(self, status: int, reason: str, event_id: str | None = None) -> tuple[int, dict]:
        log.warning("webhook rejected event %s: %s", event_id or "?", reason)
        with self._lock:
            self.rejected.append({"status": status, "reason": reason, "event_id": event_id})
        return status, {"error": reason}

    def handle(self, headers: dict[str, str], body: bytes | None) -> tuple[int, dict]:
        """Decide on one request: (HTTP status, JSON reply). Independent of the HTTP server."""
        try:
            event = verify(headers, body, self._secret, self.max_age)
        except Rejected as r:
            return self._reject(r.status, r.reason, r.event_id)
        event_id = event.get_id()
        stamp = _event_time(event).timestamp()
        with self._lock:
            self._seen.forget_older_than(time.time() - self.max_age)
            if event_id in self._seen:
                log.info("webhook ignored replayed event %s", event_id)
                return 200, {"duplicate": True, "event_id": event_id, "run_id": self._seen.value(event_id)}
            self._seen.claim(event_id, stamp)  # before running, so a concurrent retry is a replay
        try:
            run_id = self.on_event(event.get_data())
        except Exception as e:
            with self._lock:
                self._seen.release(event_id)  # not accepted: a retry may run it
            log.error("webhook handler failed for event %s: %s", event_id, e)
            return 500, {"error": f"handler failed: {type(e).__name__}", "event_id": event_id}
        with self._lock:
            self._seen.accept(event_id, stamp, run_id)
            self.received.append(
                {"event_id": event_id, "run_id": run_id, "type": event.get_type(), "source": event.get_source()}
            )
        log.info("webhook accepted event %s → run %s", event_id, run_id)
        return 202, {"event_id": event_id, "run_id": run_id}


class Rejected(Exception):
    """Why one request is refused: the HTTP status to answer, a reason, the event id when known."""

    def __init__(self, status: int, reason: str, event_id: str | None = None):
        super().__init__(reason)
        self.status, self.reason, self.event_id = status, reason, event_id


def _event_time(event) -> datetime:
    t = event.get_time()
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t


def verify(headers: dict[str, str], body: bytes | None, secret: bytes, max_age: float):
    """The CloudEvent of a request whose signature is right and whose time is within `max_age` seconds
    of now; raises Rejected (413, 401 or 400) otherwise. Replays are the caller's business (it keeps
    the ids). Shared by this receiver and the gateway (taskloom.events.gateway)."""
    from cloudevents.core.bindings.http import HTTPMessage, from_http_event

    lower = {k.lower(): v for k, v in headers.items()}
    if body is None:
        raise Rejected(413, "body missing or too large")
    signature = lower.get(SIGNATURE_HEADER.lower())
    if not signature:
        raise Rejected(401, "missing signature")
    binary = any(k.startswith("ce-") for k in lower)
    try:
        event = from_http_event(HTTPMessage(headers=headers, body=body))
        raw_time = lower.get("ce-time") if binary else json.loads(body).get("time")
        event_id, event_time = event.get_id(), event.get_time()
    except Exception as e:  # the binding raises many types for malformed input
        raise Rejected(400, f"not a CloudEvent ({type(e).__name__})") from None
    if not raw_time or event_time is None:
        raise Rejected(401, "event has no time", event_id)
    event_time = _event_time(event)
    expected = sign(signing_input(event_id, format_time(event_time), body), secret)
    if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
        raise Rejected(401, "bad signature", event_id)
    age = (datetime.now(timezone.utc) - event_time).total_seconds()
    if abs(age) > max_age:
        raise Rejected(401, f"stale event ({age:.0f} s old, max {max_age:.0f} s)", event_id)
    return event
