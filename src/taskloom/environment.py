"""The environment taskloom's processes run in: offline and quiet, defined once.

The models ship with the install (or the image), so nothing may download at run time. Pipeline pods
(pipelines/placement.py), the Triton server (serve/launcher.py), kfp.local runs, the CLI and the
tests all take their settings from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from taskloom.errors import UserError

# Nothing downloads at run time. Every pipeline pod gets exactly these (the compiled pipelines carry them).
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
# No download progress bars in logs.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# Idle torch (OpenMP) threads sleep rather than spin: on 2 busy shared cores spinning made an
# in-process MiniLM test 70x slower (32 s vs 0.44 s). Read when torch loads.
THREADS_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

LOCAL_ENV = {**OFFLINE_ENV, **QUIET_ENV, **THREADS_ENV}


def apply_local_env() -> None:
    """Set LOCAL_ENV in this process (and so in its children), keeping what the user set already.

    Call it before torch or any Hugging Face library is imported: they read these when they load."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)


def read_credential(path: str | os.PathLike, what: str) -> str:
    """A credential file's content with the whitespace around it dropped (what a Secret mounted as a file
    holds); one line naming the file when it is missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such {what} file")
    value = p.read_text(encoding="utf-8").strip()
    if not value:
        raise UserError(f"{p}: {what} file is empty")
    return value
