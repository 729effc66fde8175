"""Triton killed under load: tritonserver gets SIGKILL while 6 clients send requests for the base and two
adapters. `taskloom serve` restarts it; the clients (TritonClient, with its retries) see the requests of the
gap fail as one clean error each (a UserError naming the server, or the connection closed mid-answer,
which `taskloom infer` reports in one line), counted here; none is answered with another adapter's
output."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.client import HTTPException
from pathlib import Path

import numpy as np
import pytest
from faultkit import taskloom, wait_for

from taskloom.errors import UserError
from taskloom.serve.client import TritonClient
from taskloom.serve.launcher import free_port
from taskloom.serve.repository import build_repository

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serve_helpers import TEXTS, make_adapter

pytestmark = pytest.mark.e2e  # tier: a real Triton under a real kill

CLIENTS = 6
TARGETS = (None, "senti", "qa")


def tritonserver_pids(http_port: int) -> list[int]:
    """The tritonserver processes listening on `http_port` (found by their command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"tritonserver") and f"--http-port={http_port}".encode() in cmd:
            found.append(int(entry.name))
    return found


class Lines:
    """The serve process's stdout and stderr lines, read as they come."""

    def __init__(self, proc):
        self.lines: list[str] = []
        for stream in (proc.stdout, proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip())

    def has(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))


def test_triton_killed_under_load_is_restarted_and_never_answers_with_another_adapter(tmp_path, evidence):
    adapters = {
        "senti": make_adapter(tmp_path / "adapters", "senti", 1, ["fresh", "rotten"]),
        "qa": make_adapter(tmp_path / "adapters", "qa", 2),
    }
    repo = build_repository("minilm", tmp_path / "repo", adapters=adapters)
    http, grpc, metrics = free_port(), free_port(), free_port()
    proc = taskloom("serve", str(repo), "--http-port", str(http), "--grpc-port", str(grpc),
                    "--metrics-port", str(metrics), "--log-dir", str(tmp_path / "log"))  # fmt: skip
    out = Lines(proc)
    try:
        wait_for(lambda: out.has("Triton ready in"), "Triton ready", timeout=240)
        url = f"http://127.0.0.1:{http}"
        texts = TEXTS[:2]
        with TritonClient(url) as c:
            expected = {a: c.infer(texts, adapter=a)["embedding"] for a in TARGETS}
        for a in TARGETS:  # the three answers differ, so a mixed-up answer cannot pass for the right one
            for b in TARGETS:
                if a != b:
                    assert np.abs(expected[a] - expected[b]).max() > 1e-3

        stop = threading.Event()
        counts = {"ok": 0, "failed": 0, "mixed": 0, "other": 0}
        errors: list[str] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            with TritonClient(url, timeout=10, retries=2, backoff=0.1) as c:
                n = i
                while not stop.is_set():
                    adapter = TARGETS[n % len(TARGETS)]
                    n += 1
                    try:
                        emb = c.infer(texts, adapter=adapter)["embedding"]
                        key = "ok" if np.abs(emb - expected[adapter]).max() < 1e-4 else "mixed"
                    except (UserError, HTTPException) as e:  # clean: one line (HTTPException: closed mid-answer)
                        key = "failed"
                        with lock:
                            errors.append(str(e))
                    except Exception as e:  # anything else is a finding
                        key = "other"
                        with lock:
                            errors.append(f"{type(e).__name__}: {e}")
                    with lock:
                        counts[key] += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        wait_for(lambda: counts["ok"] >= 30, "requests served before the kill", timeout=120)
        (pid,) = tritonserver_pids(http)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: out.has("Triton ready again"), "the restart", timeout=240)
        restarted_in = time.monotonic() - killed_at
        served_before = counts["ok"]
        wait_for(lambda: counts["ok"] >= served_before + 30, "requests served after the restart", timeout=120)
        stop.set()
        for t in threads:
            t.join(timeout=60)

        assert counts["mixed"] == 0, counts
        assert counts["other"] == 0, [e for e in errors if not e.startswith(("infer", "model", "server"))][:3]
        assert counts["failed"] > 0, counts  # the gap was real, and its requests failed cleanly
        assert all("\n" not in e for e in errors), errors[:3]
        assert out.has("restarting (1/3)") and proc.poll() is None
        assert tritonserver_pids(http) and tritonserver_pids(http) != [pid]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 0, out.lines[-5:]  # SIGTERM stops it cleanly, the restarted server too
    total = sum(counts.values())
    evidence(
        "serving",
        f"tritonserver killed -9 under load ({CLIENTS} clients, base + 2 adapters)",
        total,
        f"restarted by `taskloom serve` in {restarted_in:.0f} s; {counts['failed']} requests in the gap failed "
        f"with one clean error each, counted; {counts['ok']} answered, none with another adapter's output",
    )
