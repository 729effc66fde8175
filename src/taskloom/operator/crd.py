"""The ModelDeployment CRD kept current: Helm installs crds/ once and never upgrades it, so the operator
applies the copy it ships (the chart's file, byte for byte) each time it starts.

The `taskloom.dev/crd-revision` annotation orders copies: an older (or unannotated) live CRD is replaced,
a newer one is left alone (an older operator never downgrades it), and an equal one is replaced only when
its spec lost something the shipped copy declares (a hand edit).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import yaml

from taskloom.operator.kube import Conflict, Forbidden, Kube, NotFound

CRD_FILE = Path(__file__).resolve().parent / "modeldeployments.taskloom.dev.yaml"
REVISION = "taskloom.dev/crd-revision"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
log = logging.getLogger("taskloom.operator")


def shipped() -> dict:
    return yaml.safe_load(CRD_FILE.read_text())


def revision(crd: dict) -> int:
    """The copy's revision; 0 for one without the annotation (charts before it) or with a malformed one."""
    raw = str(((crd.get("metadata") or {}).get("annotations") or {}).get(REVISION, "")).strip()
    return int(raw) if raw.isdigit() else 0


def covers(live: Any, want: Any) -> bool:
    """Whether `live` holds every field of `want` with the same value (the server adds defaults of its own)."""
    if isinstance(want, dict):
        return isinstance(live, dict) and all(k in live and covers(live[k], v) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(live, list) and len(live) == len(want) and all(map(covers, live, want))
    return live == want


def plan(live: dict | None, want: dict) -> str:
    """What to do with the live CRD: create, update, keep (current) or newer (left alone)."""
    if live is None:
        return "create"
    have, ours = revision(live), revision(want)
    if have > ours:
        return "newer"
    if have < ours or not covers(live.get("spec"), want["spec"]):
        return "update"
    return "keep"


def _replacement(live: dict, want: dict) -> dict:
    meta = live["metadata"]
    body = {**want, "metadata": {**want["metadata"]}}
    body["metadata"]["resourceVersion"] = meta["resourceVersion"]
    for key in ("labels", "annotations"):
        body["metadata"][key] = {**(meta.get(key) or {}), **(want["metadata"].get(key) or {})}
    return body


def _established(kube: Kube, path: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        conds = (kube.get(path).get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
            return
        time.sleep(0.5)
    log.warning("%s: not Established after %g s", path, timeout)


def ensure_crd(kube: Kube, want: dict | None = None) -> str:
    """Make the live CRD current; returns what was done (plan's words, or `forbidden`). Conflicts (two
    operators starting at once) are retried against the fresh object."""
    want = want if want is not None else shipped()
    path = f"{CRDS}/{want['metadata']['name']}"
    for _ in range(5):
        try:
            live: dict | None = kube.get(path)
        except NotFound:
            live = None
        except Forbidden:
            log.warning("%s: may not read it; the CRD is left as it is", path)
            return "forbidden"
        action = plan(live, want)
        try:
            if action == "create":
                kube.create(CRDS, want)
                _established(kube, path)
            elif action == "update":
                assert live is not None
                kube.replace(path, _replacement(live, want))
        except Conflict:
            continue
        except Forbidden:
            log.warning(
                "%s: may not %s it (revision %d wanted); the CRD is left as it is", path, action, revision(want)
            )
            return "forbidden"
        if action == "newer":
            log.warning(
                "%s: revision %d is newer than this operator's %d; left as it is",
                path,
                revision(live or {}),
                revision(want),
            )
        else:
            done = {"create": "created", "update": "updated", "keep": "current"}[action]
            log.info("%s: %s at revision %d", path, done, revision(want))
        return action
    raise Conflict(path)
