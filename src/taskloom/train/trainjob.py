"""Hand a multi-GPU or multi-node training run to the Kubeflow Trainer: a TrainJob, created and waited for.

In a cluster the KFP training step holds one GPU and trains in its own pod. A run that asks for more
(several GPUs on a node, or several nodes) cannot fit one pod, so the step creates a Kubeflow Trainer v2
`TrainJob` (trainer.kubeflow.org/v1alpha1) on the `TrainingRuntime` the Helm chart installs
(charts/taskloom/templates/trainingruntime.yaml: the taskloom image, the torch ML policy, the shared
volume). The Trainer's torch plugin gives every node's container PET_NNODES, PET_NPROC_PER_NODE,
PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which `torchrun` reads as its defaults, so each
node runs exactly

    torchrun -m taskloom.cli train /mnt/taskloom/trainjobs/NAME/task/task.yaml --out /mnt/taskloom/trainjobs/NAME/out ...

and rank 0 writes the run folder on the shared volume, which the step then copies into its KFP output.
Field names follow the CRDs vendored (trimmed) in manifests/crds/ from kubeflow/trainer.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskloom.artifacts import publish_dir, staging_dir, write_json
from taskloom.errors import UserError

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
RUNTIME_KIND = "TrainingRuntime"  # namespaced: each release (namespace) has its own
# The runtime the chart installs (values: trainer.runtimeName); TASKLOOM_TRAINER_RUNTIME overrides it.
RUNTIME = "taskloom-torch-distributed"
GPU_RESOURCE = "nvidia.com/gpu"
# Where the shared ReadWriteMany claim is mounted, in the KFP step's pod and in the runtime's pods alike
# (pipelines/placement.py SHARED_MOUNT, chart persistence.mountPath); TASKLOOM_SHARED_DIR overrides it.
SHARED_DIR = "/mnt/taskloom"
TASK_FILE = "task.yaml"
LABEL_PREFIX = "taskloom.io"
# Hours of GPU time a run may take before the step gives up and deletes the TrainJob.
DEFAULT_TIMEOUT_S = 12 * 3600.0
DEFAULT_POLL_S = 15.0
# Answers that mean "try again" while polling; anything else is reported at once.
_TRANSIENT = {408, 429, 500, 502, 503, 504}
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(UserError):
    """The TrainJob could not be created, failed, or outlived its time; the message is one line."""


def in_cluster(env: dict | None = None) -> bool:
    """True inside a Kubernetes pod (the kubelet sets KUBERNETES_SERVICE_HOST in every container)."""
    return bool((os.environ if env is None else env).get("KUBERNETES_SERVICE_HOST"))


def use_trainer(nodes: int, gpus_per_node: int, env: dict | None = None) -> bool:
    """Whether a run of `nodes` x `gpus_per_node` goes to the Kubeflow Trainer rather than this process.

    One process is enough for one GPU (or CPU): it trains in-process, as always. More than one worker
    (nodes x max(gpus, 1) > 1) in a cluster becomes a TrainJob. Outside a cluster several GPUs on this
    machine train in-process on one device, and several nodes are refused: nothing could run them."""
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise UserError(f"train nodes: expected a whole number >= 1, got {nodes!r}")
    if not isinstance(gpus_per_node, int) or isinstance(gpus_per_node, bool) or gpus_per_node < 0:
        raise UserError(f"train gpus_per_node: expected a whole number >= 0, got {gpus_per_node!r}")
    if nodes * max(gpus_per_node, 1) <= 1:
        return False
    if in_cluster(env):
        return True
    if nodes > 1:
        raise UserError(
            f"train nodes={nodes}: several nodes need a Kubernetes cluster with the Kubeflow Trainer "
            "(run the KFP pipeline there), or use nodes=1 here"
        )
    return False


def _label_value(text: str) -> str:
    """A valid label value (<= 63 of [A-Za-z0-9-_.], alphanumeric at both ends), '' when nothing is left."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text))[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def trainjob_name(task: str) -> str:
    """`tl-<task>-<8 hex>`: an RFC 1035 label short enough for the JobSet's pod host names
    (`<name>-node-<i>-<j>`); random, so a retried step never collides with its previous TrainJob."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(task).lower()).strip("-")[:24].strip("-")
    return f"tl-{slug}-{secrets.token_hex(4)}" if slug else f"tl-{secrets.token_hex(4)}"


def trainjob_manifest(
    name: str,
    task_file: str | list[str],
    out_dir: str,
    *,
    nodes: int = 1,
    gpus_per_node: int = 0,
    train_args: list[str] | tuple[str, ...] = (),
    runtime: str = "",
    image: str = "",
    task: str = "",
    run_id: str = "",
    cpu_per_node: str = "",
    memory_per_node: str = "",
    env: dict[str, str] | None = None,
) -> dict:
    """The TrainJob for one taskloom training run on `nodes` nodes with `gpus_per_node` GPUs each.

    `task_file` (or a list: one multi-task adapter) and `out_dir` are paths on the shared volume as the
    runtime's pods see it; `train_args` are further `taskloom train` flags (e.g. ["--max-steps", "50"]). One process per GPU on each node
    (one per node on CPU). The runtime's image is used unless `image` is given. Resources per node default
    to those of the pipeline's GPU step per GPU (4 CPUs, 16Gi). Labels and annotations tie the job to the
    KFP run (`run_id`) and the task."""
    workers = max(int(gpus_per_node), 1)
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": cpu_per_node or str(4 * workers), "memory": memory_per_node or f"{16 * workers}Gi"},
        "limits": {"memory": memory_per_node or f"{16 * workers}Gi"},
    }
    if gpus_per_node > 0:
        resources["limits"][GPU_RESOURCE] = int(gpus_per_node)
    trainer: dict[str, Any] = {
        "numNodes": int(nodes),
        "numProcPerNode": workers,
        "command": ["torchrun"],
        "args": [
            "-m",
            "taskloom.cli",
            "train",
            *([task_file] if isinstance(task_file, str) else task_file),
            "--out",
            str(out_dir),
            *map(str, train_args),
        ],
        "resourcesPerNode": resources,
    }
    if image:
        trainer["image"] = image
    if env:
        trainer["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    labels = {"app.kubernetes.io/part-of": "taskloom", "app.kubernetes.io/component": "train"}
    annotations = {f"{LABEL_PREFIX}/task-file": str(task_file), f"{LABEL_PREFIX}/output": str(out_dir)}
    if _label_value(task):
        labels[f"{LABEL_PREFIX}/task"] = _label_value(task)
    if run_id:
        annotations[f"{LABEL_PREFIX}/kfp-run-id"] = str(run_id)
        if _label_value(run_id):
            labels[f"{LABEL_PREFIX}/kfp-run-id"] = _label_value(run_id)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "runtimeRef": {
                "apiGroup": GROUP,
                "kind": RUNTIME_KIND,
                "name": runtime or os.environ.get("TASKLOOM_TRAINER_RUNTIME") or RUNTIME,
            },
            "trainer": trainer,
        },
    }


def _one_line(text: Any, limit: int = 400) -> str:
    line = " ".join(str(text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _api_message(err: Exception) -> str:
    """The API server's own message from an ApiException (its JSON body), else the exception text."""
    import json

    body = getattr(err, "body", None)
    if body:
        try:
            msg = json.loads(body).get("message")
            if msg:
                return _one_line(msg)
        except (ValueError, AttributeError, TypeError):
            pass
    status, reason = getattr(err, "status", None), getattr(err, "reason", None)
    return _one_line(f"{status} {reason}" if status else err)


def custom_objects_api():
    """A CustomObjectsApi for this pod's service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as e:
            raise UserError(f"Kubernetes: not in a cluster and no usable kubeconfig ({_one_line(e)})") from None
    return client.CustomObjectsApi()


def current_namespace(env: dict | None = None) -> str:
    """TASKLOOM_NAMESPACE, else this pod's namespace (where the KFP run executes)."""
    environ = os.environ if env is None else env
    if environ.get("TASKLOOM_NAMESPACE"):
        return environ["TASKLOOM_NAMESPACE"]
    try:
        return _SA_NAMESPACE.read_text().strip()
    except OSError:
        raise UserError(f"Kubernetes namespace unknown: no {_SA_NAMESPACE}; set TASKLOOM_NAMESPACE") from None


def _conditions(obj: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}


def _state(obj: dict) -> str:
    """A short word for where the job is: the latest true condition, else Running/Pending from its Jobs."""
    true = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if true:
        return str(true[-1].get("type"))
    jobs = (obj.get("status") or {}).get("jobsStatus") or []
    return "Running" if any(j.get("active") or j.get("ready") for j in jobs) else "Pending"


def submit_and_wait(
    manifest: dict,
    namespace: str,
    api=None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Create the TrainJob and poll it until its Complete or Failed condition is True.

    Returns {"name", "namespace", "state": "Complete", "seconds", "status"}. A refused create (no
    Trainer installed, no permission, invalid spec), a Failed condition or a job deleted meanwhile raise
    TrainJobError with the server's or the condition's reason and message on one line. Past `timeout_s`
    the job is deleted (its pods with it) before TrainJobError is raised. Unknown fields are refused
    (fieldValidation=Strict), not silently dropped. Passing errors (5xx, 429, lost connection) while
    polling are retried until the time is up."""
    from kubernetes.client.exceptions import ApiException

    api = api if api is not None else custom_objects_api()
    name = manifest["metadata"]["name"]
    where = f"TrainJob {namespace}/{name}"
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest, field_validation="Strict")
    except ApiException as e:
        hint = {
            404: " (is the Kubeflow Trainer installed? no trainjobs.trainer.kubeflow.org here)",
            403: " (the pipeline's service account needs create/get/delete on trainjobs: the chart's RBAC)",
        }
        raise TrainJobError(f"{where}: not created: {_api_message(e)}{hint.get(e.status, '')}") from None
    start = clock()
    state, last_error = "Created", ""
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            last_error = ""
        except ApiException as e:
            if e.status == 404:
                raise TrainJobError(f"{where}: deleted before it finished (last state: {state})") from None
            if e.status not in _TRANSIENT:
                raise TrainJobError(f"{where}: cannot read its status: {_api_message(e)}") from None
            obj, last_error = None, _api_message(e)
        except OSError as e:  # urllib3 connection errors are OSErrors
            obj, last_error = None, _one_line(e)
        if obj is not None:
            conditions = _conditions(obj)
            failed = conditions.get("Failed")
            if failed and failed.get("status") == "True":
                why = ": ".join(x for x in (_one_line(failed.get("reason")), _one_line(failed.get("message"))) if x)
                raise TrainJobError(f"{where} failed: {why or 'no reason given'}")
            done = conditions.get("Complete")
            if done and done.get("status") == "True":
                return {
                    "name": name,
                    "namespace": namespace,
                    "state": "Complete",
                    "seconds": round(clock() - start, 3),
                    "status": obj.get("status") or {},
                }
            state = _state(obj)
        if clock() - start >= timeout_s:
            try:
                api.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
                )
                gone = "deleted it"
            except ApiException as e:
                gone = f"could not delete it: {_api_message(e)}"
            extra = f"; last API error: {last_error}" if last_error else ""
            raise TrainJobError(f"{where}: not finished after {timeout_s:g} s (last state: {state}); {gone}{extra}")
        sleep(poll_s)


def train_on_trainer(
    task_dir: str | Path | list,
    out_dir: str | Path,
    *,
    task: str,
    nodes: int,
    gpus_per_node: int,
    train_args: list[str],
    run_id: str = "",
    api=None,
    namespace: str = "",
    shared_dir: str | Path = "",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    **wait: Any,
) -> dict:
    """Run `taskloom train` on the staged task (or tasks: one multi-task adapter) as a TrainJob and
    return its metrics.json.

    The staged task is copied to `<shared>/trainjobs/<name>/task/` (several: `tasks/<i>/`), the job writes
    `<shared>/trainjobs/<name>/out/` (rank 0), and that folder is published whole into `out_dir`.
    The manifest sent is kept beside them as trainjob.json."""
    import json

    shared = Path(shared_dir or os.environ.get("TASKLOOM_SHARED_DIR") or SHARED_DIR)
    if not shared.is_dir():
        raise UserError(f"{shared}: the shared volume is not mounted here (the TrainJob reads the task from it)")
    name = trainjob_name(task)
    work = shared / "trainjobs" / name
    dirs = [task_dir] if isinstance(task_dir, (str, Path)) else list(task_dir)
    staged = [work / "task"] if len(dirs) == 1 else [work / "tasks" / str(i) for i in range(len(dirs))]
    for src, dst in zip(dirs, staged):
        shutil.copytree(src, dst)
    manifest = trainjob_manifest(
        name,
        [str(d / TASK_FILE) for d in staged],
        str(work / "out"),
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        train_args=train_args,
        task=task,
        run_id=run_id,
    )
    write_json(work / "trainjob.json", manifest)
    result = submit_and_wait(
        manifest, namespace or current_namespace(), api=api, timeout_s=timeout_s, poll_s=poll_s, **wait
    )
    produced = work / "out" / "metrics.json"
    if not produced.exists():
        raise TrainJobError(f"TrainJob {result['namespace']}/{name} completed but wrote no {produced}")
    tmp = staging_dir(out_dir)
    shutil.copytree(work / "out", tmp, dirs_exist_ok=True)
    publish_dir(tmp, out_dir)
    metrics = json.loads(produced.read_text())
    metrics.update(
        {
            "trainjob": name,
            "trainjob_namespace": result["namespace"],
            "nodes": nodes,
            "gpus_per_node": gpus_per_node,
            "trainjob_seconds": result["seconds"],
        }
    )
    return metrics
