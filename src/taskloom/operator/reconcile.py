"""One pass over a ModelDeployment: the version to serve, the pods switched to it, children, status.

Every pass starts from what the cluster and the model repository hold (nothing is remembered between
passes), so a restarted operator, a second one, or a timer pass lands on the same end state; a pass
that changes nothing writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from taskloom.errors import UserError
from taskloom.operator import children
from taskloom.operator.config import OperatorConfig
from taskloom.operator.kube import Kube, NotFound, collection
from taskloom.operator.pods import PodReport, pending_pods, ready_endpoints, report
from taskloom.operator.rollout import converge, needs_switch, unload
from taskloom.operator.spec import GROUP, PLURAL, VERSION, ModelSpec, parse_spec
from taskloom.operator.status import Problem, as_patch, compute_status, differs
from taskloom.operator.versions import SpecRefused, Target, model_lock, record, resolve
from taskloom.serve.deploy import read_state
from taskloom.serve.repository import read_manifest


@dataclass
class Pass:
    """What one pass did: the status to write (None: unchanged) and the Events to post."""

    status: dict | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def resource_path(namespace: str, name: str) -> str:
    return f"{collection(f'{GROUP}/{VERSION}', namespace, PLURAL)}/{name}"


def pod_reports(kube: Kube, namespace: str, name: str, model: str | None, admin_key: str | None):
    """(pending pod names, one report per ready endpoint) of the ModelDeployment `name`."""
    pods = kube.list(collection("v1", namespace, "pods"), f"{children.LABEL}={name}")
    slice_api = kube.preferred("discovery.k8s.io", ("v1", "v1beta1"))
    slices = kube.list(collection(slice_api, namespace, "endpointslices"), f"kubernetes.io/service-name={name}")
    endpoints = ready_endpoints(slices)
    reports = [report(e, model, admin_key) for e in endpoints] if model else []
    return pending_pods(pods), reports


def _apply(kube: Kube, obj: dict, plural: str) -> str | None:
    """Create `obj`, or patch it when its desired-hash differs; returns "created", "updated" or None."""
    meta = obj["metadata"]
    path = collection(obj["apiVersion"], meta["namespace"], plural)
    try:
        current = kube.get(f"{path}/{meta['name']}")
    except NotFound:
        kube.create(path, obj)
        return "created"
    cur_meta = current.get("metadata") or {}
    same_hash = (cur_meta.get("annotations") or {}).get(children.HASH_ANNOTATION) == meta["annotations"][
        children.HASH_ANNOTATION
    ]
    owned = any(o.get("uid") == meta["ownerReferences"][0]["uid"] for o in cur_meta.get("ownerReferences") or [])
    if same_hash and owned:
        return None
    patch = {"metadata": {k: meta[k] for k in ("labels", "annotations", "ownerReferences")}, "spec": obj["spec"]}
    kube.merge_patch(f"{path}/{meta['name']}", patch)
    return "updated"


def _remove(kube: Kube, api_version: str, namespace: str, plural: str, name: str, uid: str) -> bool:
    """Delete a child that is no longer wanted (only when this ModelDeployment owns it)."""
    path = f"{collection(api_version, namespace, plural)}/{name}"
    try:
        current = kube.get(path)
    except NotFound:
        return False
    if not any(o.get("uid") == uid for o in (current.get("metadata") or {}).get("ownerReferences") or []):
        return False
    kube.delete(path)
    return True


def ensure_children(kube: Kube, body: dict, spec: ModelSpec, cfg: OperatorConfig, target: Target) -> list[str]:
    """The Deployment, Service, PDB and HPA as the spec says; returns one line per change."""
    meta = body["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    pdb_api = kube.preferred("policy", ("v1", "v1beta1"))
    wanted = [
        (children.service(body, cfg), "services"),
        (children.deployment(body, spec, cfg, target.version, target.revision), "deployments"),
        (children.disruption_budget(body, spec, pdb_api), "poddisruptionbudgets"),
        (children.autoscaler(body, spec), "horizontalpodautoscalers"),
    ]
    changes = []
    for obj, plural in wanted:
        if obj is None:
            api = pdb_api if plural == "poddisruptionbudgets" else "autoscaling/v1"
            if _remove(kube, api, ns, plural, name, uid):
                changes.append(f"{plural} {name} deleted")
            continue
        done = _apply(kube, obj, plural)
        if done:
            changes.append(f"{obj['kind']} {name} {done}")
    return changes


def rollout_left(kube: Kube, namespace: str, name: str) -> str | None:
    """Why the Deployment's rollout is unfinished (its controller has not seen the last change, or pods of an
    older template remain), or None when every pod is of the current template."""
    try:
        dep = kube.get(f"{collection('apps/v1', namespace, 'deployments')}/{name}")
    except NotFound:
        return f"Deployment {name} missing"
    st, want = dep.get("status") or {}, int((dep.get("spec") or {}).get("replicas", 1))
    if int(st.get("observedGeneration") or 0) < int(dep["metadata"].get("generation") or 0):
        return f"Deployment {name}: the change is not yet seen by its controller"
    updated, total = int(st.get("updatedReplicas") or 0), int(st.get("replicas") or 0)
    if updated < want or total > updated:
        return f"Deployment {name}: {updated} of {want} pods updated, {max(total - updated, 0)} old left"
    return None


def _target_of(spec: ModelSpec, version: int) -> Target:
    manifest = read_manifest(Path(spec.repository) / spec.model / str(version))
    return Target(version, manifest["revision"], tuple(sorted(manifest.get("adapters") or {})), manifest)


def _previous(spec: ModelSpec, reports: list[PodReport], target: Target) -> int | None:
    """The version to go back to: what the pods serve now, else what versions.json says serves."""
    live = {r.version for r in reports if r.version is not None and r.version != target.version}
    if len(live) == 1:
        return live.pop()
    serving = read_state(Path(spec.repository) / spec.model).get("serving")
    return int(serving) if serving is not None and int(serving) != target.version else None


def _adapters_of(spec: ModelSpec, reports: list[PodReport]) -> dict[int, list[str]]:
    out = {}
    for v in {r.version for r in reports if r.version is not None}:
        try:
            out[v] = sorted(read_manifest(Path(spec.repository) / spec.model / str(v)).get("adapters") or {})
        except UserError:
            out[v] = []
    return out


def reconcile(kube: Kube, cfg: OperatorConfig, body: dict, admin_key: str | None) -> Pass:
    """One pass; raises versions.Busy when another deploy or operator holds the model's lock."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    generation = int(meta.get("generation") or 1)
    old = body.get("status") or {}
    out = Pass()
    problem: Problem | None = None
    spec: ModelSpec | None = None
    target: Target | None = None
    last_rollback = old.get("lastRollback")
    try:
        spec = parse_spec(body.get("spec") or {})
        target = resolve(spec)
        if target.written:
            out.events.append(("Normal", "VersionWritten", f"version {target.version} of {spec.model} written"))
    except SpecRefused as e:
        problem = Problem(e.reason, str(e))
    except UserError as e:
        problem = Problem("InvalidSpec", str(e))
    serve = target
    if (
        spec is not None
        and target is not None
        and last_rollback
        and last_rollback.get("observedGeneration") == generation
        and last_rollback.get("fromVersion") == str(target.version)
    ):  # this generation's version failed once: serve the one rolled back to, do not retry
        problem = Problem("RolledBack", last_rollback.get("reason", ""))
        serve = _target_of(spec, int(last_rollback["toVersion"]))
    pending, reports = pod_reports(kube, ns, name, spec.model if spec else None, admin_key)
    if spec is not None and serve is not None:
        if needs_switch(reports, serve) or not reports:
            with model_lock(spec):
                previous = _previous(spec, reports, serve)
                try:
                    outcome = converge(spec, serve, reports, previous, admin_key)
                except UserError as e:
                    problem, outcome = Problem("LoadFailed", str(e)), None
                if outcome is not None and outcome.rolled_back:
                    last_rollback = {**outcome.rolled_back, "time": _now(), "observedGeneration": generation}
                    problem = Problem("RolledBack", outcome.rolled_back["reason"])
                    record(spec, serve.version, "rolled_back", previous, outcome.rolled_back["reason"])
                    out.events.append(
                        (
                            "Warning",
                            "RolledBack",
                            f"version {serve.version} failed, back to {previous}: {outcome.rolled_back['reason']}",
                        )
                    )
                    serve = _target_of(spec, int(outcome.rolled_back["toVersion"]))
                elif outcome is not None:
                    out.events += [("Normal", "Loaded", line) for line in outcome.changed]
            if out.events:
                pending, reports = pod_reports(kube, ns, name, spec.model, admin_key)
        for line in ensure_children(kube, body, spec, cfg, serve):
            out.events.append(("Normal", "Applied", line))
        if reports and not needs_switch(reports, serve) and problem is None:
            with model_lock(spec):
                record(spec, serve.version, "serving", _previous(spec, reports, serve))
    want = 0
    rolling = None
    if spec is not None:
        want = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
        rolling = rollout_left(kube, ns, name)
    status = compute_status(
        generation=generation,
        version=serve.version if serve else None,
        revision=serve.revision if serve else None,
        want=want,
        pending=pending,
        reports=reports,
        adapters_of=_adapters_of(spec, reports) if spec else {},
        problem=problem,
        last_rollback=last_rollback,
        previous=old,
        now=_now(),
        rolling=rolling,
    )
    if differs(old, status):
        out.status = status
        before = {c["type"]: c.get("status") for c in old.get("conditions") or []}
        for c in status["conditions"]:
            if before.get(c["type"]) != c["status"]:
                kind = "Warning" if (c["type"] == "Degraded" and c["status"] == "True") else "Normal"
                out.events.append((kind, f"{c['type']}{c['status']}", f"{c['reason']}: {c.get('message', '')}"[:1000]))
    return out


def finalize(kube: Kube, body: dict, admin_key: str | None) -> list[str]:
    """Unload the model from every ready pod before the ModelDeployment goes; returns the pods."""
    meta = body["metadata"]
    try:
        model = parse_spec(body.get("spec") or {}).model
    except UserError:
        return []
    _, reports = pod_reports(kube, meta["namespace"], meta["name"], model, admin_key)
    return unload(reports, model, admin_key)


def write_status(kube: Kube, body: dict, status: dict) -> None:
    meta = body["metadata"]
    kube.merge_patch(resource_path(meta["namespace"], meta["name"]) + "/status", {"status": as_patch(status)})
