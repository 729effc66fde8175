"""The admin key that guards Triton's model-control API (load, unload, repository index).

Anyone who reaches Triton's port can otherwise unload the served model or load another one. Triton
restricts an API group to requests carrying a header with a given value:

    tritonserver ... --http-restricted-api=model-repository:taskloom-admin-key=KEY \\
                     --grpc-restricted-protocol=model-repository:taskloom-admin-key=KEY

Inference, health and metadata stay open. Over gRPC, Triton reads the key from the metadata key
`triton-grpc-protocol-<header>` (what `admin_headers` sends). Callers of model control (the client's load/unload and
repository index, `taskloom deploy`, the pipelines' deploy step) send the header when they have a key:
from a file they are given, else from $TASKLOOM_TRITON_ADMIN_KEY. The header name is a plain name with
no meaning to proxies (lower case: gRPC metadata keys are), $TASKLOOM_TRITON_ADMIN_HEADER overrides it.
"""

from __future__ import annotations

import os
import re

from taskloom.environment import read_credential
from taskloom.errors import UserError

KEY_ENV = "TASKLOOM_TRITON_ADMIN_KEY"
HEADER_ENV = "TASKLOOM_TRITON_ADMIN_HEADER"
DEFAULT_HEADER = "taskloom-admin-key"
RESTRICTED = "model-repository"  # Triton's name for load/unload/index
_HEADER_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_KEY_RE = re.compile(r"^[A-Za-z0-9._~+/-]+$")  # goes into a command-line flag and a header: no '=', ',', ':' or spaces


def admin_header() -> str:
    header = os.environ.get(HEADER_ENV, "").strip() or DEFAULT_HEADER
    if not _HEADER_RE.match(header):
        raise UserError(f"{HEADER_ENV}={header!r}: use lower-case letters, digits and '-'")
    return header


def check_key(key: str, where: str = "admin key") -> str:
    if not _KEY_RE.match(key):
        raise UserError(f"{where}: use letters, digits and . _ ~ + / - only (e.g. `openssl rand -hex 32`)")
    return key


def load_admin_key(path: str | os.PathLike | None = None) -> str | None:
    """The key from `path` (whitespace around it dropped), else $TASKLOOM_TRITON_ADMIN_KEY, else None (unrestricted)."""
    if path is not None:
        return check_key(read_credential(path, "admin key"), str(path))
    key = os.environ.get(KEY_ENV, "").strip()
    return check_key(key, KEY_ENV) if key else None


GRPC_PREFIX = "triton-grpc-protocol-"  # Triton looks for the gRPC metadata key under this prefix


def admin_headers(key: str | None, protocol: str = "http") -> dict[str, str] | None:
    """The header model-control requests carry (gRPC: Triton's prefix before the name); None without a key."""
    if not key:
        return None
    return {(GRPC_PREFIX if protocol == "grpc" else "") + admin_header(): key}


def server_args(key: str) -> list[str]:
    """tritonserver flags that put model control behind the header (HTTP and gRPC alike)."""
    rule = f"{RESTRICTED}:{admin_header()}={check_key(key)}"
    return [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
