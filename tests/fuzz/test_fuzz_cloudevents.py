"""CloudEvents to the events gateway: a real signed drift alarm, changed one way per case (headers dropped or
wrong, bad signatures, stale or future times, replays, oversized or damaged bodies). In-process against
`EventGateway.handle` forwarding to a real local webhook receiver; then a few against the real
`taskloom events gateway` process, which must answer each with an error and stay up."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import ROOT, TIERS, Refused
from hypothesis import strategies as st
from mutations import DEEP, WRONG_VALUES, Case, byte_mutations, deepen

from taskloom.events.cloudevent import SIGNATURE_HEADER, format_time, make_event, sign, signing_input, to_request
from taskloom.events.gateway import EventGateway
from taskloom.events.receiver import WebhookReceiver

sys.path.insert(0, str(ROOT / "tests" / "unit"))
from gateway_helpers import gateway_process

SECRET, TOKEN = "fuzz-secret-1", "fuzz-token-1"
DATA = {"task": "rt-sentiment", "window": "2024-06-10T06:00:00Z", "p_value": 0.001, "effect": 0.4}
HEADERS = ["ce-id", "ce-time", "ce-type", "ce-source", "ce-specversion", "content-type", SIGNATURE_HEADER]
REASONS = ("signature", "stale", "time", "CloudEvent", "body", "replayed")


def signed(data=DATA, when: datetime | None = None, secret=SECRET, body: bytes | None = None) -> tuple[dict, bytes]:
    """A binary-mode request as the monitor sends it; `when`/`body` re-signed as given (a valid signature)."""
    headers, raw = to_request(make_event("taskloom.drift.detected", "taskloom/monitor", data), secret)
    headers = {k.lower(): v for k, v in headers.items()}
    if when is not None or body is not None:
        if when is not None:
            headers["ce-time"] = format_time(when)
        raw = raw if body is None else body
        payload = signing_input(
            headers["ce-id"], format_time(datetime.fromisoformat(headers["ce-time"].replace("Z", "+00:00"))), raw
        )
        headers[SIGNATURE_HEADER.lower()] = sign(payload, secret)
    return headers, raw


@st.composite
def event_case(draw) -> Case:
    kind = draw(
        st.sampled_from(
            [
                "unchanged",
                "replay",
                "drop header",
                "header value",
                "bad signature",
                "stale",
                "future",
                "bad time",
                "oversized",
                "body bytes",
                "body field",
                "deep body",
                "structured mode",
            ]
        )
    )
    if kind in ("unchanged", "structured mode"):
        return Case(kind, valid=True if kind == "unchanged" else None)
    if kind == "drop header":
        return Case(kind, (draw(st.sampled_from(HEADERS)),))
    if kind == "header value":
        value = draw(WRONG_VALUES)
        return Case(kind, (draw(st.sampled_from(HEADERS)),), extra={"value": str(value)[:5000]})
    if kind == "bad signature":
        how = draw(st.sampled_from(["other secret", "flipped", "sha1", "empty", "upper", "body changed", "id changed"]))
        return Case(kind, (how,), valid=False if how != "upper" else None)
    if kind in ("stale", "future"):
        seconds = draw(st.integers(min_value=301, max_value=10**8))
        return Case(kind, (), extra={"seconds": seconds}, valid=False)
    if kind == "bad time":
        return Case(
            kind,
            (),
            extra={"value": draw(st.sampled_from(["yesterday", "", "2024-13-45T99:99:99Z", "0", "9" * 400, "\x00"]))},
        )
    if kind == "body bytes":
        return Case(kind, (), extra={"mutate": draw(byte_mutations(json.dumps(DATA).encode()))})
    if kind == "body field":
        key = draw(st.sampled_from(sorted(DATA)))
        return Case(kind, (key,), extra={"value": draw(WRONG_VALUES)})
    return Case(kind, valid=False if kind in ("oversized", "replay") else None)


def request_for(case: Case) -> tuple[dict, bytes | None, list]:
    """(headers, body, earlier requests to send first) for a case, built now so times are fresh."""
    kind, now = case.kind, datetime.now(timezone.utc)
    headers, body = signed()
    if kind == "replay":
        return headers, body, [(dict(headers), body)]
    if kind == "drop header":
        headers.pop(case.path[0].lower(), None)
    elif kind == "header value":
        headers[case.path[0].lower()] = case.extra["value"]
    elif kind == "bad signature":
        how = case.path[0]
        sig = headers[SIGNATURE_HEADER.lower()]
        headers[SIGNATURE_HEADER.lower()] = {
            "other secret": signed(secret="another-secret")[0][SIGNATURE_HEADER.lower()],
            "flipped": sig[:-1] + ("0" if sig[-1] != "0" else "1"),
            "sha1": "sha1=" + sig[7:],
            "empty": "",
            "upper": sig.upper(),
        }.get(how, sig)
        if how == "body changed":
            body = body.replace(b"0.001", b"0.002")
        if how == "id changed":
            headers["ce-id"] = headers["ce-id"][::-1]
    elif kind in ("stale", "future"):
        headers, body = signed(when=now + timedelta(seconds=case.extra["seconds"] * (1 if kind == "future" else -1)))
    elif kind == "bad time":
        headers["ce-time"] = case.extra["value"]
    elif kind == "oversized":
        body = None  # what the server hands over for a body beyond MAX_BODY or a bad Content-Length
    elif kind == "body bytes":
        headers, body = signed(body=case.extra["mutate"][1])
    elif kind == "body field":
        headers, body = signed(body=deepen(json.dumps({**DATA, case.path[0]: case.extra["value"]})).encode())
    elif kind == "deep body":
        headers, body = signed(body=deepen(json.dumps({**DATA, "task": DEEP})).encode())
    elif kind == "structured mode":
        event = {
            "specversion": "1.0",
            "id": headers["ce-id"],
            "type": headers["ce-type"],
            "source": headers["ce-source"],
            "time": headers["ce-time"],
            "datacontenttype": "application/json",
            "data": DATA,
        }
        body = json.dumps(event).encode()
        when = datetime.fromisoformat(headers["ce-time"].replace("Z", "+00:00"))
        headers = {
            "content-type": "application/cloudevents+json",
            SIGNATURE_HEADER.lower(): sign(signing_input(event["id"], format_time(when), body), SECRET),
        }
    return headers, body, []


@pytest.fixture(scope="module")
def receiver():
    runs: list = []
    with WebhookReceiver(SECRET, on_event=lambda data: runs.append(data) or f"run-{len(runs)}") as rx:
        yield rx


def answer(status: int, reply: dict) -> None:
    """2xx: accepted; 4xx: refused (the reason must say what was wrong); anything else fails the case."""
    if 200 <= status < 300:
        return
    assert 400 <= status < 500, (status, reply)
    raise Refused(str(reply.get("error", "")))


def names(case, message: str) -> bool:
    return any(r in message for r in REASONS)


@pytest.mark.parametrize("tier", TIERS)
def test_cloudevents_in_process(fuzz, receiver, tier):
    gateway = EventGateway(SECRET, receiver.url, TOKEN, max_age=300)

    def check(case):
        headers, body, before = request_for(case)
        for h, b in before:
            assert gateway.handle(h, b)[0] == 202
        answer(*gateway.handle(headers, body))

    fuzz("CloudEvents (gateway, in-process)", event_case(), check, tier, names=names)


def post(url: str, headers: dict, body: bytes | None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url, data=body if body is not None else b"x" * ((1 << 20) + 10), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.mark.e2e
@pytest.mark.parametrize("tier", TIERS)
def test_cloudevents_gateway_process(fuzz, receiver, tmp_path: Path, tier):
    """Fewer cases (each is an HTTP round trip through two servers): 30 by default, 300 in the slow tier."""
    with gateway_process(receiver.url, tmp_path, SECRET, TOKEN) as url:

        def check(case):
            headers, body, before = request_for(case)
            headers = {k: v for k, v in headers.items() if _sendable(v)}
            for h, b in before:
                assert post(url, h, b)[0] == 202
            answer(*post(url, headers, body))
            health = urllib.request.urlopen(url + "healthz", timeout=10)
            assert health.status == 200

        strategy = event_case().filter(lambda c: c.kind != "header value" or _sendable(c.extra["value"]))
        fuzz(
            "CloudEvents (gateway process)",
            strategy,
            check,
            tier,
            names=names,
            cases=30 if tier == "default" else 300,
            note="real `taskloom events gateway` process over HTTP; healthz checked after every case",
        )
        status, _reply = post(url, *signed())
        assert status == 202  # still up and forwarding


def _sendable(value: str) -> bool:
    """http.client refuses header values with control characters or non-Latin-1 text before sending."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(c in value for c in "\r\n\x00") and len(value) < 4000
