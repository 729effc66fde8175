"""kopf handlers: every change, resume and timer tick runs the same idempotent pass (reconcile.py).

One pass per ModelDeployment at a time in this process (a lock per object); across processes, the
model's deploy lock on the shared volume lets one operator switch pods while another waits and retries.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

import kopf

from taskloom.operator import reconcile as rec
from taskloom.operator.config import OperatorConfig
from taskloom.operator.kube import Kube
from taskloom.operator.spec import GROUP, PLURAL, VERSION
from taskloom.operator.versions import Busy
from taskloom.serve.admin import load_admin_key

CONFIG = OperatorConfig.from_env()
_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
_kube: Kube | None = None
log = logging.getLogger("taskloom.operator")


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube()
    return _kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.persistence.finalizer = f"{GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # handler results stay in the log; Events are the ones posted here
    settings.watching.server_timeout = 60
    settings.execution.max_workers = 8


def _pass(body: kopf.Body, retry_busy: bool) -> None:
    uid = body["metadata"]["uid"]
    with _locks[uid]:
        # the body kopf hands over may be older than what a previous pass wrote: read it afresh
        meta = body["metadata"]
        try:
            fresh = kube().get(rec.resource_path(meta["namespace"], meta["name"]))
        except rec.NotFound:
            return
        if fresh["metadata"].get("deletionTimestamp"):
            return
        try:
            result = rec.reconcile(kube(), CONFIG, fresh, load_admin_key())
        except Busy as e:
            if retry_busy:
                raise kopf.TemporaryError(str(e), delay=2) from None
            log.info("%s/%s: %s", meta["namespace"], meta["name"], e)
            return
        if result.status is not None:
            rec.write_status(kube(), fresh, result.status)
        for kind, reason, message in result.events:
            kopf.event(body, type=kind, reason=reason, message=message)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_change(body: kopf.Body, **_) -> None:
    _pass(body, retry_busy=True)


@kopf.timer(GROUP, VERSION, PLURAL, interval=CONFIG.interval, backoff=CONFIG.interval, sharp=False)
def on_timer(body: kopf.Body, **_) -> None:
    """Drift repair: a pod that lost the model, a deleted child, a pod that became ready.

    A pass that fails is retried at the next tick (kopf's default backoff for timers is 60 s, which
    would leave a pod without its model for a minute after one transient error)."""
    _pass(body, retry_busy=False)


@kopf.on.delete(GROUP, VERSION, PLURAL)
def on_delete(body: kopf.Body, **_) -> None:
    with _locks[body["metadata"]["uid"]]:
        pods = rec.finalize(kube(), dict(body), load_admin_key())
    if pods:
        kopf.event(body, type="Normal", reason="Unloaded", message=f"model unloaded from {', '.join(pods)}")
