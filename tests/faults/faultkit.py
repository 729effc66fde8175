"""Shared by the fault tests: start and kill real `taskloom` processes, check what a reader would see."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from taskloom.artifacts import verify_digest

ROOT = Path(__file__).resolve().parents[2]
EVIDENCE = ROOT / "build" / "reliability" / "faults.json"


def taskloom(*args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """`taskloom ARGS` as its own process (its own group, so a kill reaches only it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "taskloom", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def kill9(proc: subprocess.Popen) -> None:
    """SIGKILL the process (and anything it started in its group); reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    for f in (proc.stdout, proc.stderr):
        if f is not None:
            f.close()


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    """Wait for the process; one that hangs is killed (so it holds no lock the next test needs) and fails."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill9(proc)
        raise AssertionError(f"{' '.join(map(str, proc.args[2:]))} did not finish in {timeout:g} s") from None
    return proc.returncode, out, err


def wait_for(pred: Callable[[], object], what: str, timeout: float = 300, proc: subprocess.Popen | None = None):
    """Poll `pred` until it is true; fail naming `what` (and a dead process's stderr)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited {proc.returncode} before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def visible_files(folder: Path) -> list[Path]:
    """Files a reader looks at: everything not hidden (staging folders and temp files start with a dot)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def assert_whole(folder: Path) -> int:
    """Every visible file is whole: its recorded sha256 matches, JSON parses, safetensors open.
    Returns how many files were checked."""
    from safetensors import safe_open

    files = visible_files(folder)
    for p in files:
        if p.name.endswith(".sha256"):
            assert p.with_name(p.name[: -len(".sha256")]).exists(), f"{p}: digest of a missing file"
            continue
        if p.with_name(p.name + ".sha256").exists():
            assert verify_digest(p), f"{p}: sha256 does not match the recorded digest"
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                json.loads(line)
        elif p.suffix == ".safetensors":
            with safe_open(str(p), "pt") as f:
                for k in f.keys():
                    f.get_slice(k)
    return len(files)


def digests(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: sha256} of the visible files, less those named in `skip`."""
    from taskloom.artifacts import sha256_file

    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in visible_files(folder)
        if p.name not in skip and not p.name.endswith(".sha256")
    }


def record(nodeid: str, surface: str, fault: str, cases: int, outcome: str, slow: bool = False) -> None:
    """One machine-readable line per fault case in build/reliability/faults.json (RELIABILITY.md's table)."""
    EVIDENCE.parent.mkdir(parents=True, exist_ok=True)
    line = {
        "surface": surface,
        "fault": fault,
        "cases": cases,
        "outcome": outcome,
        "test": nodeid,
        "command": f".venv/bin/pytest -q {'-m slow ' if slow else ''}'{nodeid}'",
        "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(EVIDENCE, "a") as f:  # one short write per line: lines from parallel runs do not interleave
        f.write(json.dumps(line) + "\n")


def can_mount_tmpfs(path: Path, size: str = "20m") -> str | None:
    """Mount a small tmpfs at `path`; None when mounted, else the reason it could not be."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        return f"mount -t tmpfs not permitted here: {r.stderr.strip() or r.returncode}"
    return None


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)
