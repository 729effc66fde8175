"""The events gateway: the one door to the Argo Events webhook in a cluster.

Argo Events' webhook EventSource can demand a bearer token but knows nothing of taskloom's HMAC
signature, event times or ids. The gateway sits in front of it and lets an event through only when
it is signed with the shared secret, fresh (its time within `max_age` seconds of now) and new (its
id not forwarded before); it then forwards the request unchanged (CloudEvent headers and body) with
`Authorization: Bearer <token>`, a token only the gateway and the EventSource hold.

    taskloom events gateway --port 8080 --forward http://…-eventsource-svc:12000/taskloom/drift \\
        --secret-file /etc/taskloom/hmac/secret --token-file /etc/taskloom/token/token

Per POST: unsigned, forged or stale → 401 (400 not a CloudEvent, 413 too large); an id already
forwarded (or being forwarded) → 409 {"duplicate": true} (with --state FILE, also one forwarded before a
restart); the forward answered 2xx → that status and
{"event_id", "forwarded": status}; the forward failed (refused, unreachable, non-2xx) → 502, and the id
is released so the sender's retry can go through. GET /healthz → 200 for the kubelet's probes;
GET /metrics → the Prometheus counters of forwarded and refused events (`taskloom.metrics`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from taskloom.environment import read_credential
from taskloom.errors import UserError, redact
from taskloom.events.cloudevent import _secret_bytes, load_secret
from taskloom.events.receiver import Rejected, _event_time, verify
from taskloom.events.seen import SeenIds
from taskloom.events.server import JsonServer
from taskloom.metrics import GatewayMetrics

log = logging.getLogger("taskloom.events.gateway")
log.addHandler(logging.NullHandler())

TOKEN_ENV = "TASKLOOM_EVENTS_TOKEN"
# what goes on to the webhook: the CloudEvent (binary mode: ce-* headers) and its signature
FORWARD_HEADERS = ("content-type", "x-taskloom-signature")
METRICS_PATH = "/metrics"
# the refusal reason label (taskloom.metrics.GATEWAY_REFUSAL_REASONS) of each reason `verify` gives
REFUSAL_REASONS = {
    "missing signature": "unsigned",
    "bad signature": "bad_signature",
    "stale event": "stale",
    "event has no time": "no_time",
    "not a CloudEvent": "not_cloudevent",
    "body missing or too large": "too_large",
}


def _sendable(value: str) -> bool:
    """A header value http.client can send unchanged: Latin-1 text without line breaks or NUL."""
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return not any(c in value for c in "\r\n\x00")


def refusal_reason(reason: str) -> str:
    """The metric label of a `verify` refusal, by the start of its text ("other" when unknown)."""
    return next((label for start, label in REFUSAL_REASONS.items() if reason.startswith(start)), "other")


def load_token(path: str | Path | None = None, env: str = TOKEN_ENV) -> str:
    """The bearer token from a file (surrounding whitespace dropped) or else the env var."""
    if path is not None:
        token = read_credential(path, "token")
    else:
        token = os.environ.get(env, "").strip()
        if not token:
            raise UserError(f"no bearer token: give --token-file or set {env}")
    if any(c.isspace() for c in token):
        raise UserError("bearer token: must not contain whitespace")
    return token


class EventGateway(JsonServer):
    """Threaded HTTP server: verify, refuse replays, forward with the bearer token. `.url`, `.forwarded`,
    `.rejected`, `.metrics` (served on GET /metrics)."""

    name = "taskloom-gateway"

    def __init__(
        self,
        secret: str | bytes,
        forward_url: str,
        token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        max_age: float = 300.0,
        timeout: float = 10.0,
        state: str | Path | None = None,
    ):
        if not forward_url.startswith(("http://", "https://")):
            raise UserError(f"--forward {forward_url!r}: expected an http:// or https:// URL")
        if not token:
            raise UserError("bearer token is empty")
        if max_age <= 0:
            raise UserError(f"--max-age {max_age:g}: must be positive")
        self._secret = _secret_bytes(secret)
        self._token = token
        super().__init__(host, port)
        self.forward_url = forward_url
        self.max_age, self.timeout = float(max_age), float(timeout)
        self.forwarded: list[dict] = []
        self.rejected: list[dict] = []
        self._seen = SeenIds(self.max_age, state)  # kept while a replay could still be fresh; on disk given `state`
        self.metrics = GatewayMetrics()
        self._lock = threading.Lock()
        # the webhook is in-cluster (or on loopback): never through a proxy from the environment
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- one request ------------------------------------------------------------------------
    def page(self, path: str) -> tuple[str, bytes] | None:
        return (self.metrics.content_type, self.metrics.text()) if path == METRICS_PATH else None

    def _reject(
        self, status: int, reason: str, event_id: str | None = None, label: str = "other", **extra
    ) -> tuple[int, dict]:
        log.warning("gateway refused event %s: %s", event_id or "?", reason)
        self.metrics.refused(label)
        with self._lock:
            self.rejected.append({"status": status, "reason": reason, "event_id": event_id})
        return status, {"error": reason, **({"event_id": event_id} if event_id else {}), **extra}

    def handle(self, headers: dict[str, str], body: bytes | None) -> tuple[int, dict]:
        """Decide on one request and forward it: (HTTP status, JSON reply). Independent of the HTTP server."""
        # Check what will be forwarded: header values as HTTP carries them (no surrounding blanks), and
        # refuse one HTTP cannot carry rather than fail while forwarding.
        headers = {k: v.strip() for k, v in headers.items()}
        bad = next((k for k, v in headers.items() if not _sendable(v)), None)
        if bad is not None:
            return self._reject(400, f"not a CloudEvent (header {bad!r}: not HTTP header text)", None, "not_cloudevent")
        try:
            event = verify(headers, body, self._secret, self.max_age)
        except Rejected as r:
            return self._reject(r.status, r.reason, r.event_id, refusal_reason(r.reason))
        event_id = event.get_id()
        with self._lock:
            self._seen.forget_older_than(time.time() - self.max_age)  # older ones fail the time check anyway
            replay = event_id in self._seen
            if not replay:
                self._seen.claim(event_id, _event_time(event).timestamp())  # a concurrent copy is a replay
        if replay:
            return self._reject(409, "replayed event (id already forwarded)", event_id, "replay", duplicate=True)
        status, error = self._forward(headers, body)
        if error is not None or status is None:  # (status is None only with an error)
            with self._lock:
                self._seen.release(event_id)  # not delivered: the sender's retry (same id) may go through
            log.error("gateway could not forward event %s: %s", event_id, error)
            self.metrics.refused("forward_failed")
            return 502, {"error": f"forward failed: {error}", "event_id": event_id}
        with self._lock:
            self._seen.accept(event_id, _event_time(event).timestamp())
            self.forwarded.append({"event_id": event_id, "type": event.get_type(), "status": status})
        self.metrics.forwarded()
        log.info("gateway forwarded event %s (webhook answered %d)", event_id, status)
        return status, {"event_id": event_id, "forwarded": status}

    def _forward(self, headers: dict[str, str], body: bytes | None) -> tuple[int | None, str | None]:
        """POST the request on with the bearer token: (status, None) on 2xx, else (status or None, why)."""
        out = {k: v for k, v in headers.items() if k.lower().startswith("ce-") or k.lower() in FORWARD_HEADERS}
        out["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(self.forward_url, data=body, headers=out, method="POST")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            return e.code, f"webhook answered HTTP {e.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            return None, f"webhook unreachable ({getattr(e, 'reason', e)})"
        if not 200 <= status < 300:
            return status, f"webhook answered HTTP {status}"
        return status, None


def run_gateway(
    forward: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    secret_file=None,
    token_file=None,
    max_age: float = 300.0,
    timeout: float = 10.0,
    state=None,
) -> int:
    """`taskloom events gateway`: serve in the foreground until Ctrl-C or SIGTERM; prints its URL first."""
    import signal
    import sys

    secret = load_secret(secret_file)
    token = load_token(token_file)
    if not logging.getLogger().handlers:  # the pod's log: one line per accepted or refused event
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    gateway = EventGateway(secret, forward, token, host=host, port=port, max_age=max_age, timeout=timeout, state=state)
    stop = threading.Event()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)
    if main_thread:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gateway.start()
    try:
        print(f"gateway listening on {gateway.url}, forwarding to {redact(forward)}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        gateway.stop()
    return 0
