"""Atomic artifact writes: temp file + rename, with a sha256 recorded beside the file.

A reader never sees a half-written file, and every artifact can be checked against its digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask_mode(base: int = 0o666) -> int:
    """The mode a plain `open()` (0o666) or `mkdir` (0o777) would give; mkstemp/mkdtemp alone give 0600/0700."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def _replacing(path: Path):
    """Yield a temp path beside `path`; on success give it the usual mode and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, digest: bool = True) -> Path:
    """Write `data` to `path` atomically; with `digest`, also write `path.sha256`. The old digest goes
    first, so a kill between the two writes leaves a file without a digest, never one with a stale one."""
    path = Path(path)
    if digest:
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    with _replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if digest:
        write_digest(path)
    return path


def write_text(path: str | os.PathLike, text: str, *, digest: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), digest=digest)


def write_json(path: str | os.PathLike, obj: Any, *, digest: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", digest=digest)


def write_digest(path: str | os.PathLike) -> Path:
    """Record `sha256  name` beside `path` (the format `sha256sum -c` reads)."""
    path = Path(path)
    return write_bytes(
        path.with_name(path.name + ".sha256"), f"{sha256_file(path)}  {path.name}\n".encode(), digest=False
    )


def recorded_digest(path: str | os.PathLike) -> str:
    """The sha256 recorded beside `path` when there is one (just written), else computed."""
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    return side.read_text().split()[0] if side.exists() else sha256_file(path)


def verify_digest(path: str | os.PathLike) -> bool:
    """True when `path.sha256` exists and matches the file."""
    path = Path(path)
    side = path.with_name(path.name + ".sha256")
    if not side.exists():
        return False
    return side.read_text().split()[0] == sha256_file(path)


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> Path:
    """Save torch tensors as safetensors atomically, with a sha256 beside the file."""
    from safetensors.torch import save_file

    path = Path(path)
    with _replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    write_digest(path)
    return path


def publish_dir(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move a fully written staging folder into place; an existing `final` is replaced whole."""
    staging, final = Path(staging), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(staging, final)
        shutil.rmtree(old)
    else:
        os.replace(staging, final)
    return final


def _writer() -> tuple[str, str, int]:
    """(host, PID namespace, pid) of this process: enough to tell later that it is gone."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "0"
    return socket.gethostname(), namespace, os.getpid()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _sweep_staging(final: Path, host: str, namespace: str) -> None:
    """Remove staging folders beside `final` left by a killed writer: made on this host, in this PID
    namespace, by a process that no longer exists. Anything else (another pod on a shared volume, a
    live writer, a name it cannot read) is left alone."""
    prefix = f".{final.name}.staging."
    for d in final.parent.glob(f"{prefix}*"):
        parts = d.name[len(prefix) :].rsplit(".", 3)  # host.namespace.pid.random; the host may hold dots
        if len(parts) == 4 and parts[:2] == [host, namespace] and parts[2].isdigit() and not _alive(int(parts[2])):
            shutil.rmtree(d, ignore_errors=True)


def staging_dir(final: str | os.PathLike) -> Path:
    """A fresh temp folder beside `final` (same filesystem, so `publish_dir` is a rename), named after
    its writer so that a later call can remove what a killed writer left (a whole model, often)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    host, namespace, pid = _writer()
    _sweep_staging(final, host, namespace)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging.{host}.{namespace}.{pid}."))
    os.chmod(tmp, _umask_mode(0o777))
    return tmp
