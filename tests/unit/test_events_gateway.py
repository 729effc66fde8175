"""The events gateway end to end: a real `taskloom events gateway` process in front of a stand-in for
the Argo Events webhook that demands the bearer token, as in the chart.

Only a signed, fresh, new event gets through, exactly once and with the token; forged, stale and
replayed ones are refused with 4xx and never reach the webhook; a failed forward is a 502 (not 2xx)
and the sender's retry with the same id then goes through; without the token the webhook refuses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from gateway_helpers import gateway_process

from taskloom.events.cloudevent import make_event, send_event, to_request

SECRET = "gateway-test-secret-0123456789"
TOKEN = "tok-" + uuid.uuid4().hex
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StandIn:
    """The Argo webhook's part: 401 without `Authorization: Bearer TOKEN`, else record and 200 (or `fail_with`)."""

    def __init__(self):
        self.received: list[dict] = []
        self.refused = 0
        self.fail_with: int | None = None
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    stand_in.refused += 1
                    return self._answer(401, b"unauthorized")
                if stand_in.fail_with:
                    return self._answer(stand_in.fail_with, b"broken")
                stand_in.received.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                self._answer(200, b"success")

            def _answer(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/taskloom/drift"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def post(url: str, headers: dict, body: bytes) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with NO_PROXY.open(req, timeout=20) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def signed(data: dict, secret: str = SECRET, when: datetime | None = None, event_id: str | None = None):
    event = make_event("taskloom.drift.detected", "taskloom/monitor", data, id=event_id or uuid.uuid4().hex)
    if when is not None:
        from cloudevents.core.v1.event import CloudEvent

        event = CloudEvent(attributes={"type": "taskloom.drift.detected", "source": "taskloom/monitor", "id": event.get_id(),
                                       "datacontenttype": "application/json", "time": when}, data=data)
    return event.get_id(), *to_request(event, secret)


@pytest.fixture(scope="module")
def stand_in():
    s = StandIn()
    yield s
    s.close()


@pytest.fixture(scope="module")
def gateway(stand_in, tmp_path_factory):
    """`taskloom events gateway` on a free loopback port, secret and token from files as in the pod."""
    with gateway_process(stand_in.url, tmp_path_factory.mktemp("gw"), SECRET, TOKEN) as url:
        yield url


def test_health_path_answers_get(gateway):
    with NO_PROXY.open(gateway + "healthz", timeout=10) as r:
        assert r.status == 200 and json.loads(r.read()) == {"ok": True}


def test_signed_event_is_forwarded_once_with_the_token_and_a_replay_is_refused(gateway, stand_in):
    before = len(stand_in.received)
    event_id, headers, body = signed({"task": "rt-sentiment", "adapter_id": "a1"})
    status, reply = post(gateway, headers, body)
    assert status == 200 and reply == {"event_id": event_id, "forwarded": 200}
    (got,) = stand_in.received[before:]
    assert got["body"] == body and json.loads(got["body"])["task"] == "rt-sentiment"
    assert got["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert got["headers"]["ce-id"] == event_id  # the CloudEvent goes on unchanged (binary mode)

    status, reply = post(gateway, headers, body)  # the same request again
    assert status == 409 and reply["duplicate"] is True
    assert len(stand_in.received) == before + 1


def test_send_event_through_the_gateway(gateway, stand_in):
    """What the monitor does in the cluster (taskloom.monitor.service.deliver → send_event)."""
    before = len(stand_in.received)
    ack = send_event(gateway, "taskloom.drift.detected", {"task": "lee-similarity"}, SECRET, event_id="alarm-key-1")
    assert ack["status"] == 200 and len(stand_in.received) == before + 1
    again = send_event(gateway, "taskloom.drift.detected", {"task": "lee-similarity"}, SECRET, event_id="alarm-key-1")
    assert again["status"] == 409 and len(stand_in.received) == before + 1


def test_a_replay_is_refused_after_the_gateway_is_killed_and_restarted(stand_in, tmp_path):
    """With --state the forwarded ids outlive the process: kill -9, restart on the same file, replay → 409."""
    state = tmp_path / "state" / "seen.jsonl"
    before = len(stand_in.received)
    event_id, headers, body = signed({"task": "rt-sentiment"})
    with gateway_process(stand_in.url, tmp_path, SECRET, TOKEN, "--state", str(state), kill=True) as url:
        assert post(url, headers, body)[0] == 200
    assert json.loads(state.read_text().splitlines()[-1])["id"] == event_id
    with open(state, "a") as f:
        f.write('{"id": "torn')  # a write cut short by a kill: that event was never answered
    with gateway_process(stand_in.url, tmp_path, SECRET, TOKEN, "--state", str(state)) as url:
        status, reply = post(url, headers, body)
        assert status == 409 and reply["duplicate"] is True
        fresh_id, fresh_headers, fresh_body = signed({"task": "rt-sentiment"})
        assert post(url, fresh_headers, fresh_body) == (200, {"event_id": fresh_id, "forwarded": 200})
    assert [json.loads(r["body"])["task"] for r in stand_in.received[before:]] == ["rt-sentiment"] * 2
    assert {json.loads(line)["id"] for line in state.read_text().splitlines()} == {event_id, fresh_id}


def test_a_damaged_state_file_is_one_line_and_exit_2(stand_in, tmp_path):
    state = tmp_path / "seen.jsonl"
    state.write_text('{"id": "a", "time": 1}\nnot json\n')
    r = subprocess.run([sys.executable, "-m", "taskloom", "events", "gateway", "--port", "0", "--forward", stand_in.url,
                        "--state", str(state)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "TASKLOOM_WEBHOOK_SECRET": SECRET, "TASKLOOM_EVENTS_TOKEN": TOKEN})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and f"{state}:2: not a seen-event record" in r.stderr, r.stderr
    assert state.read_text() == '{"id": "a", "time": 1}\nnot json\n'


@pytest.mark.parametrize("case", ["forged", "stale", "future", "unsigned", "not_an_event"])
def test_bad_events_are_refused_and_never_forwarded(gateway, stand_in, case):
    before = len(stand_in.received)
    if case == "forged":
        _, headers, body = signed({"task": "rt-sentiment"}, secret="not-the-secret")
    elif case == "stale":  # signed with the right secret, but older than --max-age
        _, headers, body = signed({"task": "rt-sentiment"}, when=datetime.now(timezone.utc) - timedelta(minutes=5))
    elif case == "future":
        _, headers, body = signed({"task": "rt-sentiment"}, when=datetime.now(timezone.utc) + timedelta(minutes=5))
    elif case == "unsigned":
        _, headers, body = signed({"task": "rt-sentiment"})
        headers = {k: v for k, v in headers.items() if k.lower() != "x-taskloom-signature"}
    else:
        headers, body = {"Content-Type": "application/json", "X-Taskloom-Signature": "sha256=00"}, b"{}"
    status, reply = post(gateway, headers, body)
    assert 400 <= status < 500, (status, reply)
    assert len(stand_in.received) == before


def test_forged_copy_of_a_good_event_is_refused(gateway, stand_in):
    """Same id and time, body changed: the signature covers the body."""
    before = len(stand_in.received)
    _, headers, body = signed({"task": "rt-sentiment"})
    status, _ = post(gateway, headers, body.replace(b"rt-sentiment", b"chatterbot-qa"))
    assert status == 401 and len(stand_in.received) == before


def test_a_failed_forward_is_502_and_the_retry_goes_through(gateway, stand_in):
    before = len(stand_in.received)
    event_id, headers, body = signed({"task": "chatterbot-topic"})
    stand_in.fail_with = 500
    try:
        status, reply = post(gateway, headers, body)
    finally:
        stand_in.fail_with = None
    assert status == 502 and "HTTP 500" in reply["error"]
    assert len(stand_in.received) == before
    status, reply = post(gateway, headers, body)  # the sender retries with the same id
    assert status == 200 and reply["event_id"] == event_id
    assert len(stand_in.received) == before + 1


def test_the_webhook_refuses_a_direct_call_without_the_token(stand_in):
    before, refused = len(stand_in.received), stand_in.refused
    _, headers, body = signed({"task": "rt-sentiment"})
    status, _ = post(stand_in.url, headers, body)
    assert status == 401 and stand_in.refused == refused + 1 and len(stand_in.received) == before


def test_missing_secret_file_is_one_line_and_exit_2(tmp_path, stand_in):
    r = subprocess.run([sys.executable, "-m", "taskloom", "events", "gateway", "--port", "0", "--forward", stand_in.url,
                        "--secret-file", str(tmp_path / "nope"), "--token-file", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no such secret file" in r.stderr


def test_the_monitor_counts_a_resend_the_gateway_refuses_as_delivered(gateway, stand_in):
    """An alarm resent after its forward went through (e.g. the reply was lost) is a 409 replay, which
    the monitor records as a duplicate, not as a rejection."""
    from taskloom.monitor.service import deliver

    alarm = {"key": uuid.uuid4().hex, "task": "rt-sentiment", "adapter_id": "rt-v1", "retrain_adapter_id": "rt-v2",
             "first_window_start": "2023-11-14T22:15:00Z", "window_start": "2023-11-14T22:20:00Z",
             "windows": ["2023-11-14T22:15:00Z"], "p_values": [0.004], "q_value": 0.004, "effect": 0.08, "method": "mmd"}
    before = len(stand_in.received)
    first = deliver(alarm, gateway, SECRET.encode(), timeout=10)
    again = deliver(alarm, gateway, SECRET.encode(), timeout=10)
    assert (first["status"], first["http_status"]) == ("delivered", 200)
    assert (again["status"], again["http_status"], again["attempts"]) == ("duplicate", 409, 1)
    assert len(stand_in.received) == before + 1


def test_the_chart_keeps_the_gateway_state_on_an_empty_dir_and_refuses_a_second_replica():
    import yaml

    repo = Path(__file__).resolve().parents[2]
    helm = [str(repo / ".tools" / "helm"), "template", "tl", str(repo / "charts" / "taskloom"),
            "--set", "events.hmacSecret.name=hmac"]  # fmt: skip
    docs = [d for d in yaml.safe_load_all(subprocess.run(helm, capture_output=True, text=True, check=True).stdout) if d]
    (pod,) = [d["spec"]["template"]["spec"] for d in docs
              if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("gateway")]  # fmt: skip
    (container,) = pod["containers"]
    (state,) = [a for a in container["args"] if a.startswith("--state=")]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "state")
    assert state.removeprefix("--state=").startswith(mount["mountPath"] + "/")
    assert next(v for v in pod["volumes"] if v["name"] == "state")["emptyDir"]
    two = subprocess.run([*helm, "--set", "events.gateway.replicas=2"], capture_output=True, text=True)
    assert two.returncode != 0 and "/events/gateway/replicas': maximum: got 2, want 1" in two.stderr, two.stderr
