"""The HTTP plumbing the webhook receiver and the events gateway share: a threaded server on (host,
port) whose POSTs go to `handle(headers, body) -> (status, JSON payload)`, whose GET /healthz
answers 200 for a kubelet's probes and whose other GETs go to `page(path)` (the gateway's /metrics).
Subclasses hold the rules; this holds the sockets."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from taskloom.errors import UserError

log = logging.getLogger("taskloom.events")
log.addHandler(logging.NullHandler())  # a library: the application decides where logs go

MAX_BODY = 1 << 20  # 1 MiB: a drift alarm is a few hundred bytes
DRAIN_LIMIT = 8 * MAX_BODY  # a larger body is not read at all: the connection is closed after the 413
DRAIN_WAIT = 1.0  # seconds an oversized body may pause while it is read away
HEALTH_PATH = "/healthz"
S = TypeVar("S", bound="JsonServer")


class JsonServer:
    """Start with `.start()` or `with`; `.url` once started (port 0 picks a free one)."""

    name = "taskloom-events"

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handle(self, headers: dict[str, str], body: bytes | None) -> tuple[int, dict]:
        raise NotImplementedError

    def page(self, path: str) -> tuple[str, bytes] | None:
        """(content type, body) for a GET of `path` other than /healthz, or None for 404 (e.g. /metrics)."""
        return None

    def start(self: S) -> S:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # http.server's name
                path = self.path.split("?", 1)[0]
                if path == HEALTH_PATH:
                    return self._answer(200, {"ok": True})
                page = owner.page(path)
                if page is None:
                    self._answer(404, {"error": "not found"})
                else:
                    self._send(200, *page)

            def do_POST(self):
                self._answer(*owner.handle(dict(self.headers.items()), self._body()))

            def _answer(self, status: int, payload: dict) -> None:
                self._send(status, "application/json", json.dumps(payload).encode())

            def _send(self, status: int, content_type: str, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes | None:
                """The request body, or None when its length is missing, malformed or over MAX_BODY."""
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                except ValueError:
                    return None
                if length < 0 or length > MAX_BODY:
                    left = length if MAX_BODY < length <= DRAIN_LIMIT else 0
                    self.connection.settimeout(DRAIN_WAIT)  # a client that announced a body it never sends
                    try:
                        while left > 0:  # read it away, so the client gets the 413 rather than a reset
                            chunk = self.rfile.read(min(left, 1 << 16))
                            if not chunk:
                                break
                            left -= len(chunk)
                    except OSError:  # timed out: answer now, then close
                        pass
                    self.close_connection = True
                    return None
                return self.rfile.read(length)

            def log_message(self, fmt, *args):  # keep stderr clean; the log has it
                log.debug("%s %s - %s", owner.name, self.address_string(), fmt % args)

        try:
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        except OSError as e:
            raise UserError(f"cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self: S) -> S:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"
