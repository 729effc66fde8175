"""Delivering an alarm: its key is the CloudEvent id, so retries and resends start one retrain at most."""

from __future__ import annotations

import threading

from taskloom.events.cloudevent import make_event, send_event
from taskloom.events.receiver import WebhookReceiver
from taskloom.monitor.service import SEND_ATTEMPTS, deliver

SECRET = "alarm-secret"
ALARM = {"key": "k" * 64, "task": "rt-sentiment", "adapter_id": "rt-v1", "retrain_adapter_id": "rt-sentiment-kkkkkkkk",
         "first_window_start": "2023-11-14T22:15:00Z", "window_start": "2023-11-14T22:20:00Z",
         "windows": ["2023-11-14T22:15:00Z", "2023-11-14T22:20:00Z"], "p_values": [0.004, 0.002], "q_value": 0.004,
         "effect": 0.08, "method": "mmd"}


class Retrains:
    """on_event stand-in counting retrains; can fail its first `fail` calls like a busy pipeline API."""

    def __init__(self, fail: int = 0):
        self.calls, self.fail, self.lock = [], fail, threading.Lock()

    def __call__(self, data):
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("pipeline API busy")
            self.calls.append(data)
            return f"run-{len(self.calls)}"


def test_event_id_can_be_fixed():
    assert make_event("t", "s", {}, id="abc").get_id() == "abc"
    assert make_event("t", "s", {}).get_id() != make_event("t", "s", {}).get_id()


def test_same_alarm_twice_starts_one_retrain():
    retrains = Retrains()
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        first = deliver(ALARM, rx.url, SECRET.encode(), timeout=10)
        again = deliver(ALARM, rx.url, SECRET.encode(), timeout=10)
        plain = send_event(rx.url, "io.taskloom.drift.detected", {"task": "x"}, SECRET, event_id=ALARM["key"])
    assert (first["status"], first["run_id"], first["http_status"], first["attempts"]) == ("delivered", "run-1", 202, 1)
    assert (again["status"], again["run_id"]) == ("duplicate", "run-1")
    assert plain["status"] == 200 and plain["response"]["duplicate"] is True
    assert len(retrains.calls) == 1
    data = retrains.calls[0]
    assert data["task"] == "rt-sentiment" and data["adapter_id"] == "rt-sentiment-kkkkkkkk"
    assert data["drifted_adapter_id"] == "rt-v1" and data["idempotency_key"] == ALARM["key"]
    assert rx.received[0]["event_id"] == ALARM["key"]


def test_a_failed_handler_is_retried_with_the_same_id():
    retrains, sleeps = Retrains(fail=1), []
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        d = deliver(ALARM, rx.url, SECRET.encode(), timeout=10, sleep=sleeps.append)
    assert (d["status"], d["attempts"], d["run_id"]) == ("delivered", 2, "run-1")
    assert sleeps == [0.5] and len(retrains.calls) == 1


def test_unreachable_webhook_is_undelivered_after_retries():
    rx = WebhookReceiver(SECRET, on_event=Retrains()).start()
    url = rx.url
    rx.stop()  # nothing listens there now
    sleeps = []
    d = deliver(ALARM, url, SECRET.encode(), timeout=2, sleep=sleeps.append)
    assert d["status"] == "undelivered" and d["attempts"] == SEND_ATTEMPTS and d["http_status"] is None
    assert "cannot deliver event" in d["error"] and sleeps == [0.5, 1.0]


def test_wrong_secret_is_rejected_without_retrying():
    retrains = Retrains()
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        d = deliver(ALARM, rx.url, b"not-the-secret", timeout=10, sleep=lambda s: None)
    assert (d["status"], d["http_status"], d["attempts"]) == ("rejected", 401, 1)
    assert d["error"] == "bad signature" and retrains.calls == []
