"""The Triton pods of a ModelDeployment: ready endpoints from EndpointSlices, pending pods, what each serves.

The operator talks to every ready pod by its own address (never through the Service, which would pick
one at random), so each pod's loaded version is checked and changed on its own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass

from taskloom.errors import UserError
from taskloom.serve.client import TritonClient


@dataclass(frozen=True)
class Endpoint:
    pod: str
    address: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@dataclass(frozen=True)
class PodReport:
    """What one pod serves: the model's READY version and that version's revision (a digest over every
    file, the adapters' sha256s included); `error` when the pod did not answer."""

    pod: str
    url: str
    version: int | None
    revision: str | None
    error: str | None = None


def ready_endpoints(slices: list[dict], port_name: str = "http") -> list[Endpoint]:
    """Ready endpoints of the Service's EndpointSlices (v1 and v1beta1 read alike), one per address."""
    out: dict[tuple[str, int], Endpoint] = {}
    for s in slices:
        port = next((p.get("port") for p in s.get("ports") or [] if p.get("name") == port_name), None)
        if not port:
            continue
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:  # unset means ready (the API's rule)
                continue
            pod = (ep.get("targetRef") or {}).get("name", "")
            for addr in ep.get("addresses") or []:
                out[(addr, int(port))] = Endpoint(pod, addr, int(port))
    return sorted(out.values(), key=lambda e: (e.pod, e.address))


def pod_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return status.get("phase") == "Running" and ready


def pending_pods(pods: list[dict]) -> list[str]:
    """Pods that exist, are not being deleted, and are not Running and Ready yet."""
    return sorted(
        p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp") and not pod_ready(p)
    )


def served(index: list[dict], model: str) -> int | None:
    """The READY version of `model` in a repository index (None: not loaded)."""
    for m in index:
        if m.get("name") == model and m.get("state") == "READY" and str(m.get("version", "")).isdigit():
            return int(m["version"])
    return None


def _config_revision(url: str, model: str, timeout: float) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{url}/v2/models/{model}/config", timeout=timeout) as r:
        cfg = json.loads(r.read())
    return ((cfg.get("parameters") or {}).get("revision") or {}).get("string_value")


def client_for(endpoint: Endpoint, model: str, admin_key: str | None, timeout: float = 120) -> TritonClient:
    return TritonClient(endpoint.url, model=model, timeout=timeout, retries=2, backoff=0.2, admin_key=admin_key)


def report(endpoint: Endpoint, model: str, admin_key: str | None, timeout: float = 10) -> PodReport:
    """Ask one pod what it serves."""
    try:
        with client_for(endpoint, model, admin_key, timeout) as c:
            version = served(c.repository_index(), model)
        revision = _config_revision(endpoint.url, model, timeout) if version is not None else None
    except (UserError, OSError, urllib.error.URLError, ValueError) as e:
        return PodReport(endpoint.pod, endpoint.url, None, None, f"{type(e).__name__}: {e}")
    return PodReport(endpoint.pod, endpoint.url, version, revision)
