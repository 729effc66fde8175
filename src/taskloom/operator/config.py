"""How the operator builds Triton pods: image, ports, admin key, shared volume (from the chart's env)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from taskloom.errors import UserError
from taskloom.serve.admin import DEFAULT_HEADER


def _int(env: str, default: int) -> int:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise UserError(f"{env}={raw!r}: a whole number")
    return int(raw)


@dataclass(frozen=True)
class OperatorConfig:
    """Set by the chart's operator Deployment (TASKLOOM_OPERATOR_*); the defaults suit a development run."""

    image: str = "nvcr.io/nvidia/tritonserver:24.08-py3"
    pull_policy: str = "IfNotPresent"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    admin_secret: str | None = None  # Secret holding Triton's admin key (the chart's triton-adminkey)
    admin_secret_key: str = "key"
    admin_header: str = DEFAULT_HEADER
    shared_claim: str | None = None  # the PVC holding model repositories, mounted read-only at mount_path
    mount_path: str = "/shared"
    service_account: str | None = None
    interval: float = 15.0  # seconds between drift checks of one ModelDeployment

    @classmethod
    def from_env(cls) -> OperatorConfig:
        e = os.environ.get
        interval = e("TASKLOOM_OPERATOR_INTERVAL", "").strip()
        try:
            seconds = float(interval) if interval else cls.interval
        except ValueError:
            raise UserError(f"TASKLOOM_OPERATOR_INTERVAL={interval!r}: seconds") from None
        return cls(
            image=e("TASKLOOM_OPERATOR_TRITON_IMAGE") or cls.image,
            pull_policy=e("TASKLOOM_OPERATOR_PULL_POLICY") or cls.pull_policy,
            http_port=_int("TASKLOOM_OPERATOR_HTTP_PORT", cls.http_port),
            grpc_port=_int("TASKLOOM_OPERATOR_GRPC_PORT", cls.grpc_port),
            metrics_port=_int("TASKLOOM_OPERATOR_METRICS_PORT", cls.metrics_port),
            admin_secret=e("TASKLOOM_OPERATOR_ADMIN_SECRET") or None,
            admin_secret_key=e("TASKLOOM_OPERATOR_ADMIN_SECRET_KEY") or cls.admin_secret_key,
            admin_header=e("TASKLOOM_TRITON_ADMIN_HEADER") or cls.admin_header,
            shared_claim=e("TASKLOOM_OPERATOR_SHARED_CLAIM") or None,
            mount_path=e("TASKLOOM_OPERATOR_MOUNT_PATH") or cls.mount_path,
            service_account=e("TASKLOOM_OPERATOR_TRITON_SERVICE_ACCOUNT") or None,
            interval=seconds,
        )
