"""Drift alarms as CloudEvents over HTTP (binary mode), signed with HMAC-SHA256.

The signature covers the event id, its time and the body, so a receiver can tell a forged event
(bad signature), an old one (time too far back) and a replayed one (id seen before) apart:

    X-Taskloom-Signature: sha256=HMAC(secret, f"{id}.{time}.".encode() + body)

In a cluster the same request goes to the events gateway (`taskloom.events.gateway`), which checks it
and forwards it to the Argo Events webhook EventSource; locally to `taskloom.events.receiver.WebhookReceiver`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from taskloom.errors import UserError

SIGNATURE_HEADER = "X-Taskloom-Signature"
SECRET_ENV = "TASKLOOM_WEBHOOK_SECRET"


def load_secret(path: str | os.PathLike | None = None, env: str = SECRET_ENV) -> bytes:
    """The shared webhook secret from a file (trailing newline dropped) or else the env var."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: no such secret file")
        secret = p.read_bytes().rstrip(b"\r\n")
        if not secret:
            raise UserError(f"{p}: secret file is empty")
        return secret
    value = os.environ.get(env, "")
    if not value:
        raise UserError(f"no webhook secret: set {env} or give a secret file")
    return value.encode("utf-8")


def _secret_bytes(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise UserError("webhook secret is empty")
    return key


def format_time(t: datetime) -> str:
    """Canonical UTC time string that both sides sign (microseconds, 'Z')."""
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def signing_input(event_id: str, event_time: str, body: bytes) -> bytes:
    return f"{event_id}.{event_time}.".encode() + body


def sign(body: bytes, secret: str | bytes) -> str:
    """'sha256=<hex>' of HMAC-SHA256(secret, body)."""
    return "sha256=" + hmac.new(_secret_bytes(secret), body, hashlib.sha256).hexdigest()


def make_event(type: str, source: str, data: dict, id: str | None = None):
    """A CloudEvents 1.0 event (current UTC time, JSON data). Without `id` a new UUID; with one (an
    idempotency key) a resend is the same event, which the receiver accepts only once."""
    from cloudevents.core.v1.event import CloudEvent

    attributes = {
        "type": type,
        "source": source,
        "datacontenttype": "application/json",
        "time": datetime.now(timezone.utc),
    }
    if id is not None:
        if not isinstance(id, str) or not id:
            raise UserError(f"event id must be a non-empty string, got {id!r}")
        attributes["id"] = id
    return CloudEvent(attributes=attributes, data=data)


def to_request(event, secret: str | bytes) -> tuple[dict[str, str], bytes]:
    """(headers, body) of the binary-mode HTTP message, signature header included."""
    from cloudevents.core.bindings.http import to_binary_event

    msg = to_binary_event(event)
    headers = dict(msg.headers)
    payload = signing_input(event.get_id(), format_time(event.get_time()), msg.body)
    headers[SIGNATURE_HEADER] = sign(payload, secret)
    return headers, msg.body


def send_event(
    url: str,
    event_type: str,
    data: dict,
    secret: str | bytes,
    source: str = "taskloom/monitor",
    timeout: float = 10,
    event_id: str | None = None,
) -> dict:
    """POST one signed event; {"status": HTTP status, "id": event id, "response": parsed JSON or text}.

    `event_id`: a fixed id (e.g. an alarm's idempotency key) so that a retry is recognised as a replay."""
    event = make_event(event_type, source, data, id=event_id)
    headers, body = to_request(event, secret)
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:  # 4xx/5xx: the receiver answered; report, don't raise
        status, raw = e.code, e.read()
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise UserError(f"cannot deliver event to {url}: {reason}") from None
    try:
        response = json.loads(raw) if raw else None
    except ValueError:
        response = raw.decode("utf-8", "replace")
    return {"status": status, "id": event.get_id(), "response": response}
