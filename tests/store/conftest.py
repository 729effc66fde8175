"""Real PostgreSQL and Redis servers for the store tests: started once per session on free local ports,
in temporary folders, without persistence; stopped and removed afterwards.

`scripts/system-packages.sh` installs them (Debian's postgresql and redis-server)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "taskloom"
PG_PASSWORD = "pg-s3cret:@/"  # characters a URL must quote
REDIS_PASSWORD = "redis-s3cret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/system-packages.sh", pytrace=False)
    return Path(found[-1]).parent


def _as_owner(cmd: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 (password authentication); yields its URL without a database."""
    from urllib.parse import quote

    bindir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="taskloom-pg-"))
    data, pwfile = root / "data", root / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run(
        _as_owner(
            [str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}", "-A", "scram-sha-256"]
            + ["-E", "UTF8", "--no-sync"]
        ),
        **run,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c full_page_writes=off"
    subprocess.run(
        _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"), "-w", "start"]), **run
    )
    try:
        yield f"postgresql://{PG_USER}:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]), **run)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A redis-server on 127.0.0.1 with a password, no snapshots, no append-only file; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run scripts/system-packages.sh", pytrace=False)
    root = Path(tempfile.mkdtemp(prefix="taskloom-redis-"))
    port = _free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--requirepass",
            REDIS_PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
            "--databases",
            "64",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}", pytrace=False)
                time.sleep(0.05)
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


_redis_dbs = iter(range(1, 64))


@pytest.fixture
def cluster_urls(postgres_server: str, redis_server: str) -> tuple[str, str]:
    """A new, empty PostgreSQL database and Redis database: (postgres_url, redis_url) for one test."""
    import psycopg

    name = f"store_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{postgres_server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}?sslmode=disable", f"{redis_server}/{next(_redis_dbs)}"
