"""Deploy by declaring: create or patch a ModelDeployment and wait until the operator reports it Ready.

What `taskloom deploy --kubernetes` and the deploy step do instead of calling Triton themselves: the
resource stays the one record of what should be live. An adapter goes in with the sha256 of its weights as
found on disk (after its own digest file is checked), so the operator serves exactly those bytes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from taskloom.artifacts import sha256_file
from taskloom.errors import UserError
from taskloom.operator.kube import Conflict, Forbidden, Kube, NotFound, collection
from taskloom.operator.spec import GROUP, KIND, PLURAL, VERSION
from taskloom.serve.adapters import check_adapter, check_name

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True)
class Declaration:
    """What to change in a ModelDeployment; fields left None keep what the resource says."""

    model: str
    repository: str
    version: int | None = None
    add: tuple[Path, ...] = ()
    adapter_name: str | None = None
    remove: tuple[str, ...] = ()
    keep_adapters: bool = True  # False: a new base model, which serves none of the old adapters
    canary: bool | None = None
    engine: str | None = None
    precision: str | None = None
    replicas: int | None = None


def current_namespace() -> str:
    """The pod's own namespace in a cluster, else the kubeconfig context's, else `default` (as kubectl)."""
    if SA_NAMESPACE.exists():
        return SA_NAMESPACE.read_text().strip() or "default"
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()
    except (config.ConfigException, FileNotFoundError):
        return "default"
    return (active or {}).get("context", {}).get("namespace") or "default"


def adapter_entry(folder: Path, name: str | None = None) -> dict:
    """{"name", "path", "sha256"} of an adapter folder: checked as a deploy checks it, never written."""
    info = check_adapter(folder, name)
    weights = Path(info["path"]) / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"{folder}: no adapter_model.safetensors: not an adapter folder")
    return {"name": info["name"], "path": info["path"], "sha256": sha256_file(weights)}


def _adapters(current: list[dict], d: Declaration) -> list[dict]:
    if d.adapter_name is not None and len(d.add) != 1:
        raise UserError("--adapter-name: with exactly one adapter folder")
    added = [adapter_entry(p, d.adapter_name) for p in d.add]
    names = {a["name"] for a in added}
    for r in d.remove:
        check_name(r)
        if r in names:
            raise UserError(f"adapter {r!r}: both added and removed")
        if r not in {a.get("name") for a in current}:
            raise UserError(f"adapter {r!r}: not declared in the ModelDeployment, nothing to remove")
    kept = [
        {k: a[k] for k in ("name", "path", "sha256")}
        for a in current
        if a.get("name") not in names and a.get("name") not in d.remove
    ]
    return sorted(kept + added, key=lambda a: a["name"])


def spec_of(current: dict | None, d: Declaration) -> dict:
    """The spec fields this declaration sets (a merge patch of the current spec, or a new spec)."""
    check_name(d.model, "model name")
    if not PurePosixPath(d.repository).is_absolute() or "://" in d.repository:
        raise UserError(
            f"--repo {d.repository!r}: with --kubernetes, the repository's absolute path as the pods mount it"
        )
    model: dict = {"name": d.model, "repository": d.repository}
    if d.version is not None:
        model["version"] = str(d.version)
    current_adapters = ((current or {}).get("adapters") or []) if d.keep_adapters else []
    spec: dict = {"model": model, "adapters": _adapters(current_adapters, d)}
    if d.canary is not None:
        spec["rollout"] = {"canary": d.canary}
    for key, value in (("engine", d.engine), ("precision", d.precision), ("replicas", d.replicas)):
        if value is not None:
            spec[key] = value
    return spec


def path_of(namespace: str, name: str) -> str:
    return f"{collection(f'{GROUP}/{VERSION}', namespace, PLURAL)}/{name}"


def apply(kube: Kube, namespace: str, name: str, d: Declaration) -> dict:
    """Create the ModelDeployment or merge-patch its spec against the version read (Conflict: read again)."""
    check_name(name, "ModelDeployment name")
    path = path_of(namespace, name)
    for _ in range(5):
        try:
            try:
                live: dict | None = kube.get(path)
            except NotFound:
                live = None
            spec = spec_of(live["spec"] if live else None, d)
            if live is None:
                body = {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": KIND,
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": spec,
                }
                return kube.create(collection(f"{GROUP}/{VERSION}", namespace, PLURAL), body)
            rv = live["metadata"]["resourceVersion"]
            return kube.merge_patch(path, {"metadata": {"resourceVersion": rv}, "spec": spec})
        except Conflict:
            continue
        except Forbidden:
            raise UserError(f"{path}: forbidden (may this identity get, create and patch modeldeployments?)") from None
    raise UserError(f"ModelDeployment {namespace}/{name}: changed by someone else five times in a row; try again")


def _condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def wait_ready(kube: Kube, namespace: str, name: str, generation: int, timeout: float, poll: float = 1.0) -> dict:
    """The ModelDeployment once Ready for `generation`; UserError when Degraded for it or after `timeout` s."""
    path = path_of(namespace, name)
    end = time.monotonic() + timeout
    while True:
        obj = kube.get(path)
        st = obj.get("status") or {}
        gen = obj["metadata"].get("generation", generation)
        ready, degraded = _condition(obj, "Ready"), _condition(obj, "Degraded")
        if gen != generation:
            raise UserError(f"ModelDeployment {namespace}/{name}: changed by someone else (generation {gen})")
        if st.get("observedGeneration") == gen and ready.get("status") == "True":
            return obj
        if degraded.get("status") == "True" and degraded.get("observedGeneration") == gen:
            message = " ".join(str(degraded.get("message", "")).split())
            raise UserError(f"ModelDeployment {namespace}/{name}: Degraded ({degraded.get('reason')}): {message}")
        if time.monotonic() >= end:
            why = f"{ready.get('reason')}: {ready.get('message', '')}" if ready else "no status from the operator"
            raise UserError(
                f"ModelDeployment {namespace}/{name}: not Ready after {timeout:g} s ({' '.join(why.split())})"
            )
        time.sleep(poll)


def deploy(
    d: Declaration,
    namespace: str | None = None,
    name: str | None = None,
    timeout: float = 300.0,
    kube: Kube | None = None,
) -> dict:
    """Declare, then wait for Ready; returns what is served (the resource's status) for a report."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    namespace = namespace or current_namespace()
    name = name or d.model
    try:
        kube = kube or Kube()
        obj = apply(kube, namespace, name, d)
        done = wait_ready(kube, namespace, name, obj["metadata"]["generation"], timeout)
    except ConfigException as e:
        raise UserError(f"no Kubernetes credentials (kubeconfig or a pod's ServiceAccount): {e}") from None
    except ApiException as e:
        raise UserError(f"ModelDeployment {namespace}/{name}: the API server answered {e.status} {e.reason}") from None
    except HTTPError as e:
        raise UserError(f"the API server cannot be reached: {type(e).__name__}") from None
    st = done.get("status") or {}
    return {
        "model_deployment": f"{namespace}/{name}",
        "generation": done["metadata"]["generation"],
        "model": d.model,
        "repository": d.repository,
        "version": st.get("liveVersion"),
        "adapters": st.get("adaptersLoaded", []),
        "ready_replicas": st.get("readyReplicas"),
    }
