"""`taskloom events gateway` as a pod runs it, for the tests that talk to a real gateway process."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path


@contextlib.contextmanager
def gateway_process(forward: str, folder: Path, secret: str, token: str, *extra: str, kill: bool = False):
    """The gateway on a free loopback port, secret and token from files; yields its URL; SIGTERM ends it
    (exit 0), or SIGKILL with `kill`."""
    (folder / "secret").write_text(secret + "\n")
    (folder / "token").write_text(token + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TASKLOOM_WEBHOOK_SECRET", "TASKLOOM_EVENTS_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-m", "taskloom", "events", "gateway", "--port", "0",
                             "--forward", forward, "--secret-file", str(folder / "secret"),
                             "--token-file", str(folder / "token"), "--max-age", "60", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("gateway listening on http://127.0.0.1:"), (line, proc.poll())
        yield line.split()[3].rstrip(",")
    finally:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            assert proc.wait(10) == (-signal.SIGKILL if kill else 0)
        finally:
            if proc.poll() is None:
                proc.kill()
