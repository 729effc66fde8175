"""Bring each ready pod to the target version through Triton's model-control API, with deploy's checks.

The first switch away from a live older version is canaried (the target loaded as `<name>.candidate` on
one pod and smoked); each pod is then switched and smoked (`taskloom.serve.deploy`). A failure puts the
pods already switched back on the previous version: a rollback, reported and not retried for the same
generation. A pod already serving the target is left alone (no duplicate loads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from taskloom.errors import UserError
from taskloom.operator.pods import Endpoint, PodReport, client_for
from taskloom.operator.spec import ModelSpec
from taskloom.operator.versions import Target
from taskloom.serve.deploy import SMOKE_TEXTS, activate, restore, run_canary, write_config


@dataclass
class Outcome:
    changed: list[str] = field(default_factory=list)  # one line per pod switched, for Events
    rolled_back: dict | None = None  # {"fromVersion", "toVersion", "reason"} when the target failed


def _endpoint(r: PodReport) -> Endpoint:
    host, port = r.url.removeprefix("http://").rsplit(":", 1)
    return Endpoint(r.pod, host, int(port))


def needs_switch(reports: list[PodReport], target: Target) -> list[PodReport]:
    return [r for r in reports if r.error is None and (r.version, r.revision) != (target.version, target.revision)]


def converge(
    spec: ModelSpec, target: Target, reports: list[PodReport], previous: int | None, admin_key: str | None
) -> Outcome:
    """Switch the pods of `reports` that do not serve `target`; hold the model's lock around this."""
    out = Outcome()
    folder = Path(spec.repository) / spec.model
    todo = needs_switch(reports, target)
    if not reports:  # nothing runs: pods that start load what config.pbtxt names
        write_config(folder, target.version, spec.model)
        return out
    if not todo:
        return out
    texts = list(spec.smoke_texts) or list(SMOKE_TEXTS)
    checks: list = [None, *target.adapters]
    live_older = any(r.version is not None and r.version != target.version for r in reports)
    if spec.canary and live_older and previous is not None:
        with client_for(_endpoint(todo[0]), spec.model, admin_key) as c:
            try:
                run_canary(
                    c, Path(spec.repository), spec.model, target.version, target.manifest, checks, texts, None, None
                )
            except UserError as e:
                out.rolled_back = {
                    "fromVersion": str(target.version),
                    "toVersion": str(previous),
                    "reason": f"canary on {todo[0].pod}: {e}",
                }
                return out
    switched: list[PodReport] = []
    for r in todo:
        with client_for(_endpoint(r), spec.model, admin_key) as c:
            try:
                activate(c, folder, spec.model, target.version, target.manifest, checks, texts, None, None)
            except UserError as e:
                if previous is None or not spec.rollback:
                    raise
                for back in [*switched, r]:
                    with client_for(_endpoint(back), spec.model, admin_key) as cb:
                        restore(cb, folder, spec.model, previous, e, texts)
                out.rolled_back = {
                    "fromVersion": str(target.version),
                    "toVersion": str(previous),
                    "reason": f"{r.pod}: {e}",
                }
                return out
        switched.append(r)
        out.changed.append(f"pod {r.pod}: version {r.version or 'none'} -> {target.version}")
    return out


def unload(reports: list[PodReport], model: str, admin_key: str | None) -> list[str]:
    """Unload the model from every pod that answers (a ModelDeployment being deleted); returns the pods."""
    done = []
    for r in reports:
        if r.error is not None or r.version is None:
            continue
        with client_for(_endpoint(r), model, admin_key, timeout=30) as c:
            c.unload_model(model)
        done.append(r.pod)
    return done
