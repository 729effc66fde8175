"""Signed CloudEvents and the embedded webhook: accept once, reject forged, unsigned, stale, replayed."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest

from taskloom.errors import UserError
from taskloom.events.cloudevent import (
    SIGNATURE_HEADER,
    format_time,
    load_secret,
    make_event,
    send_event,
    sign,
    to_request,
)
from taskloom.events.receiver import WebhookReceiver

SECRET = "test-secret-0123456789"


class Runs:
    """on_event stand-in that records each call and hands out run ids (the real one starts a pipeline)."""

    def __init__(self, delay: float = 0.0):
        self.calls, self.lock, self.delay = [], threading.Lock(), delay

    def __call__(self, data: dict) -> str:
        time.sleep(self.delay)
        with self.lock:
            self.calls.append(data)
            return f"run-{len(self.calls)}"


def post(url: str, headers: dict, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def event_at(when: datetime, data=None):
    from cloudevents.core.v1.event import CloudEvent

    return CloudEvent(attributes={"type": "io.taskloom.drift.detected", "source": "taskloom/monitor",
                                  "datacontenttype": "application/json", "time": when},
                      data=data or {"task": "rt-sentiment"})


def test_sign_is_hmac_sha256_of_the_bytes():
    expected = hmac.new(SECRET.encode(), b"payload", hashlib.sha256).hexdigest()
    assert sign(b"payload", SECRET) == "sha256=" + expected
    assert sign(b"payload", SECRET.encode()) == sign(b"payload", SECRET)
    assert sign(b"payload", "other") != sign(b"payload", SECRET)


def test_binary_mode_headers_and_signature_cover_id_and_time():
    event = make_event("io.taskloom.drift.detected", "taskloom/monitor", {"task": "t", "p_value": 0.004})
    headers, body = to_request(event, SECRET)
    assert headers["ce-specversion"] == "1.0" and headers["ce-id"] == event.get_id()
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"task": "t", "p_value": 0.004}
    signed = f"{event.get_id()}.{format_time(event.get_time())}.".encode() + body
    assert headers[SIGNATURE_HEADER] == sign(signed, SECRET)
    assert headers[SIGNATURE_HEADER] != sign(body, SECRET)


def test_signed_event_is_accepted_and_handled_once():
    runs = Runs()
    with WebhookReceiver(SECRET, on_event=runs) as rx:
        assert rx.url.startswith("http://127.0.0.1:") and rx.port > 0
        ack = send_event(rx.url, "io.taskloom.drift.detected", {"task": "rt-sentiment", "adapter_id": "a1"}, SECRET)
    assert ack["status"] == 202
    assert ack["response"] == {"event_id": ack["id"], "run_id": "run-1"}
    assert runs.calls == [{"task": "rt-sentiment", "adapter_id": "a1"}]
    assert rx.received == [{"event_id": ack["id"], "run_id": "run-1", "type": "io.taskloom.drift.detected",
                            "source": "taskloom/monitor"}]


def test_structured_mode_is_accepted_too():
    from cloudevents.core.bindings.http import to_structured_event

    runs = Runs()
    event = make_event("io.taskloom.drift.detected", "taskloom/monitor", {"task": "t"})
    msg = to_structured_event(event)
    headers = dict(msg.headers)
    headers[SIGNATURE_HEADER] = sign(f"{event.get_id()}.{format_time(event.get_time())}.".encode() + msg.body, SECRET)
    with WebhookReceiver(SECRET, on_event=runs) as rx:
        status, reply = post(rx.url, headers, msg.body)
    assert (status, reply["run_id"], runs.calls) == (202, "run-1", [{"task": "t"}])


@pytest.mark.parametrize("case", ["wrong secret", "missing", "tampered body", "forged time"])
def test_bad_or_missing_signature_is_401_and_nothing_runs(case):
    runs = Runs()
    event = make_event("io.taskloom.drift.detected", "taskloom/monitor", {"task": "rt-sentiment"})
    headers, body = to_request(event, "wrong-secret" if case == "wrong secret" else SECRET)
    if case == "missing":
        del headers[SIGNATURE_HEADER]
    elif case == "tampered body":
        body = body.replace(b"rt-sentiment", b"chatterbot-qa")
    elif case == "forged time":
        headers["ce-time"] = format_time(datetime.now(timezone.utc) + timedelta(seconds=1))
    with WebhookReceiver(SECRET, on_event=runs) as rx:
        status, reply = post(rx.url, headers, body)
    assert status == 401
    assert reply["error"] == ("missing signature" if case == "missing" else "bad signature")
    assert runs.calls == [] and rx.received == []
    assert rx.rejected[0]["status"] == 401


def test_stale_event_is_401_even_when_signed():
    runs = Runs()
    headers, body = to_request(event_at(datetime.now(timezone.utc) - timedelta(seconds=301)), SECRET)
    fresh_headers, fresh_body = to_request(event_at(datetime.now(timezone.utc) - timedelta(seconds=200)), SECRET)
    with WebhookReceiver(SECRET, on_event=runs, max_age=300) as rx:
        status, reply = post(rx.url, headers, body)
        assert status == 401 and reply["error"].startswith("stale event")
        assert post(rx.url, fresh_headers, fresh_body)[0] == 202
    assert len(runs.calls) == 1


def test_replayed_event_is_acknowledged_but_not_run_again():
    runs = Runs()
    headers, body = to_request(event_at(datetime.now(timezone.utc)), SECRET)
    with WebhookReceiver(SECRET, on_event=runs) as rx:
        first = post(rx.url, headers, body)
        second = post(rx.url, headers, body)
    assert first == (202, {"event_id": headers["ce-id"], "run_id": "run-1"})
    assert second == (200, {"duplicate": True, "event_id": headers["ce-id"], "run_id": "run-1"})
    assert len(runs.calls) == 1 and len(rx.received) == 1


def test_with_state_a_restarted_receiver_still_knows_the_event_and_its_run(tmp_path):
    runs, state = Runs(), tmp_path / "seen.jsonl"
    headers, body = to_request(event_at(datetime.now(timezone.utc)), SECRET)
    with WebhookReceiver(SECRET, on_event=runs, state=state) as rx:
        assert post(rx.url, headers, body)[0] == 202
    stale = json.dumps({"id": "long-gone", "time": time.time() - 3600, "run": "run-0"})
    state.write_text(state.read_text() + stale + "\n")  # older than the replay window: dropped on start
    with WebhookReceiver(SECRET, on_event=runs, state=state) as rx:
        again = post(rx.url, headers, body)
    assert again == (200, {"duplicate": True, "event_id": headers["ce-id"], "run_id": "run-1"})
    assert len(runs.calls) == 1
    assert [json.loads(line)["id"] for line in state.read_text().splitlines()] == [headers["ce-id"]]


def test_concurrent_retries_of_one_event_run_it_once():
    runs = Runs(delay=0.3)  # the retries arrive while the first is still starting its run
    headers, body = to_request(event_at(datetime.now(timezone.utc)), SECRET)
    with WebhookReceiver(SECRET, on_event=runs) as rx:
        results = []
        threads = [threading.Thread(target=lambda: results.append(post(rx.url, headers, body)[0])) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(runs.calls) == 1
    assert sorted(results) == [200] * 7 + [202]


def test_a_failing_handler_is_500_and_the_event_can_be_retried():
    attempts = []

    def flaky(data):
        attempts.append(data)
        if len(attempts) == 1:
            raise RuntimeError("pipeline backend down")
        return "run-ok"

    headers, body = to_request(event_at(datetime.now(timezone.utc)), SECRET)
    with WebhookReceiver(SECRET, on_event=flaky) as rx:
        assert post(rx.url, headers, body)[0] == 500
        assert post(rx.url, headers, body) == (202, {"event_id": headers["ce-id"], "run_id": "run-ok"})
    assert len(attempts) == 2


def test_not_a_cloudevent_is_400():
    with WebhookReceiver(SECRET, on_event=Runs()) as rx:
        status, _ = post(rx.url, {"Content-Type": "application/json", SIGNATURE_HEADER: "sha256=00"}, b"[1, 2")
    assert status == 400


def test_stop_closes_the_port():
    rx = WebhookReceiver(SECRET, on_event=Runs()).start()
    url = rx.url
    rx.stop()
    with pytest.raises(UserError, match="cannot deliver event"):
        send_event(url, "io.taskloom.drift.detected", {}, SECRET, timeout=2)


def test_load_secret_from_file_or_env(tmp_path, monkeypatch):
    f = tmp_path / "secret"
    f.write_text("from-file\n")
    assert load_secret(f) == b"from-file"
    monkeypatch.setenv("TASKLOOM_WEBHOOK_SECRET", "from-env")
    assert load_secret() == b"from-env"
    monkeypatch.delenv("TASKLOOM_WEBHOOK_SECRET")
    with pytest.raises(UserError, match="TASKLOOM_WEBHOOK_SECRET"):
        load_secret()
    with pytest.raises(UserError, match="no such secret file"):
        load_secret(tmp_path / "absent")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(UserError, match="empty"):
        load_secret(tmp_path / "empty")
