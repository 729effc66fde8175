"""A ModelDeployment's status from what its pods report: conditions Ready / Progressing / Degraded.

Ready is True only when no pod is pending, at least the declared replicas are ready, and every ready pod
serves the declared version with its revision (the digest that covers the adapters' sha256s).
"""

from __future__ import annotations

from dataclasses import dataclass

from taskloom.operator.pods import PodReport


@dataclass(frozen=True)
class Problem:
    """Why the spec is not served (Degraded=True with this reason)."""

    reason: str
    message: str


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int, previous: dict, now: str) -> dict:
    status = "True" if ok else "False"
    old = previous.get(kind) or {}
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    cond = {"type": kind, "status": status, "reason": reason, "lastTransitionTime": since or now}
    if message:  # the API server reads an empty string as null, which the schema refuses
        cond["message"] = str(message)[:1000]
    return {**cond, "observedGeneration": generation}


def live_version(reports: list[PodReport]) -> str:
    """The version every ready pod serves; several, comma-separated, while they differ."""
    versions = sorted({r.version for r in reports if r.version is not None})
    return ",".join(str(v) for v in versions)


def compute_status(
    *,
    generation: int,
    version: int | None,
    revision: str | None,
    want: int,
    pending: list[str],
    reports: list[PodReport],
    adapters_of: dict[int, list[str]],
    problem: Problem | None,
    last_rollback: dict | None,
    previous: dict,
    now: str,
    rolling: str | None = None,
) -> dict:
    """The status subresource (whole), from one look at the pods. `previous`: the current status.
    `rolling`: why the Deployment's rollout is not finished (old pods left): not Ready until it is, as a
    new pod may still come up without the version the old ones were switched to."""
    converged = [r for r in reports if version is not None and r.version == version and r.revision == revision]
    behind = [r.pod for r in reports if r not in converged]
    ready = problem is None and not pending and not behind and len(converged) >= want and not rolling
    if problem is not None:
        ready_reason, ready_msg = problem.reason, problem.message
    elif pending:
        ready_reason, ready_msg = "PodsPending", f"pending: {', '.join(pending)}"
    elif behind:
        ready_reason, ready_msg = "Converging", f"not yet serving version {version}: {', '.join(behind)}"
    elif len(converged) < want:
        ready_reason, ready_msg = "WaitingForPods", f"{len(converged)} of {want} replicas ready"
    elif rolling:
        ready_reason, ready_msg = "RollingOut", rolling
    else:
        ready_reason, ready_msg = "Serving", f"{len(converged)} pod(s) serve version {version} (revision {revision})"
    prev_conds = {c.get("type"): c for c in previous.get("conditions") or []}
    progressing = not ready and problem is None
    live = live_version(reports)
    loaded = adapters_of.get(int(live), []) if live.isdigit() else []
    status = {
        "observedGeneration": generation,
        **({"liveVersion": live} if live else {}),
        "adaptersLoaded": sorted(loaded),
        "readyReplicas": len(converged),
        "conditions": [
            _condition("Ready", ready, ready_reason, ready_msg, generation, prev_conds, now),
            _condition(
                "Progressing",
                progressing,
                ready_reason if progressing else ("Converged" if ready else "Stopped"),
                ready_msg if progressing else "",
                generation,
                prev_conds,
                now,
            ),
            _condition(
                "Degraded",
                problem is not None,
                problem.reason if problem else "AsDeclared",
                problem.message if problem else "",
                generation,
                prev_conds,
                now,
            ),
        ],
    }
    if last_rollback:
        status["lastRollback"] = last_rollback
    return status


STATUS_KEYS = ("observedGeneration", "liveVersion", "adaptersLoaded", "readyReplicas", "lastRollback")


def differs(old: dict, new: dict) -> bool:
    """Whether writing `new` changes anything (conditions compared without their timestamps)."""

    def strip(s: dict) -> dict:
        conds = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in s.get("conditions") or []]
        return {**{k: s.get(k) for k in STATUS_KEYS}, "conditions": conds}

    return strip(old) != strip(new)


def as_patch(new: dict) -> dict:
    """A merge patch writing `new`: keys it leaves out are removed (null), lastRollback is kept."""
    return {**{k: None for k in STATUS_KEYS if k != "lastRollback"}, **new}
