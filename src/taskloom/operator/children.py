"""The objects a ModelDeployment owns, computed from its spec: Triton Deployment, Service, PDB, HPA.

The pod template carries the version to serve and the adapters' sha256s (annotations and env), and its
start command is the chart's (charts/taskloom/templates/triton.yaml): explicit model control loading the
model, whose config.pbtxt names that version, so a restarted pod serves it by itself.
"""

from __future__ import annotations

import hashlib
import json

from taskloom.operator.config import OperatorConfig
from taskloom.operator.spec import GROUP, KIND, VERSION, ModelSpec

LABEL = f"{GROUP}/modeldeployment"
VERSION_ANNOTATION = f"{GROUP}/model-version"
REVISION_ANNOTATION = f"{GROUP}/revision"
ADAPTERS_ANNOTATION = f"{GROUP}/adapters"
HASH_ANNOTATION = f"{GROUP}/desired-hash"


def owner_reference(body: dict) -> dict:
    meta = body["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def selector(name: str) -> dict[str, str]:
    return {LABEL: name}


def _labels(name: str) -> dict[str, str]:
    return {
        **selector(name),
        "app.kubernetes.io/name": "triton",
        "app.kubernetes.io/component": "triton",
        "app.kubernetes.io/part-of": "taskloom",
        "app.kubernetes.io/managed-by": "taskloom-operator",
    }


def _meta(body: dict, kind_labels: dict | None = None) -> dict:
    name = body["metadata"]["name"]
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": {**_labels(name), **(kind_labels or {})},
        "ownerReferences": [owner_reference(body)],
    }


def with_hash(obj: dict) -> dict:
    """Stamp a digest of the object as written, so an unchanged child is never patched again."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
    obj["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
    return obj


def _gpu_placement(spec: ModelSpec) -> tuple[dict, dict, list]:
    """(resources, nodeSelector, tolerations) for the GPU Operator's nodes; all empty without GPUs."""
    if spec.gpus <= 0:
        return {}, {}, []
    resource = f"nvidia.com/mig-{spec.mig_profile}" if spec.sharing == "mig" else "nvidia.com/gpu"
    node_selector = {"nvidia.com/gpu.present": "true"}
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {resource: str(spec.gpus)}, node_selector, tolerations


def triton_args(spec: ModelSpec, cfg: OperatorConfig) -> list[str]:
    """The chart's Triton start command, loading only this model (its config.pbtxt names the version)."""
    args = [
        f"--model-repository={spec.repository}",
        "--model-control-mode=explicit",
        f"--load-model={spec.model}",
        f"--http-port={cfg.http_port}",
        f"--grpc-port={cfg.grpc_port}",
        f"--metrics-port={cfg.metrics_port}",
        "--strict-readiness=true",
    ]
    if cfg.admin_secret:
        rule = f"model-repository:{cfg.admin_header}=$(TRITON_ADMIN_KEY)"
        args += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
    return args


def deployment(body: dict, spec: ModelSpec, cfg: OperatorConfig, version: int, revision: str) -> dict:
    """The Triton Deployment serving `version` (whose manifest revision is `revision`)."""
    name = body["metadata"]["name"]
    resources, node_selector, tolerations = _gpu_placement(spec)
    adapters = ",".join(f"{a}={d}" for a, d in sorted(spec.adapter_digests.items()))
    env: list[dict] = [
        {"name": "TASKLOOM_MODEL_VERSION", "value": str(version)},
        {"name": "TASKLOOM_MODEL_REVISION", "value": revision},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
        {"name": "OMP_WAIT_POLICY", "value": "PASSIVE"},
    ]
    if cfg.admin_secret:
        env.insert(
            0,
            {
                "name": "TRITON_ADMIN_KEY",
                "valueFrom": {"secretKeyRef": {"name": cfg.admin_secret, "key": cfg.admin_secret_key}},
            },
        )
    container = {
        "name": "triton",
        "image": cfg.image,
        "imagePullPolicy": cfg.pull_policy,
        "command": ["tritonserver"],
        "args": triton_args(spec, cfg),
        "env": env,
        "ports": [
            {"name": "http", "containerPort": cfg.http_port, "protocol": "TCP"},
            {"name": "grpc", "containerPort": cfg.grpc_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": cfg.metrics_port, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
        },
        "resources": {"requests": dict(resources), "limits": dict(resources)} if resources else {},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec: dict = {
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
    }
    if cfg.service_account:
        pod_spec["serviceAccountName"] = cfg.service_account
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
        pod_spec["tolerations"] = tolerations
    if cfg.shared_claim:
        container["volumeMounts"] = [{"name": "shared", "mountPath": cfg.mount_path, "readOnly": True}]
        pod_spec["volumes"] = [{"name": "shared", "persistentVolumeClaim": {"claimName": cfg.shared_claim}}]
    dep_spec: dict = {
        "selector": {"matchLabels": selector(name)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "template": {
            "metadata": {
                "labels": _labels(name),
                "annotations": {
                    VERSION_ANNOTATION: str(version),
                    REVISION_ANNOTATION: revision,
                    ADAPTERS_ANNOTATION: adapters,
                },
            },
            "spec": pod_spec,
        },
    }
    if spec.autoscaling is None:
        dep_spec["replicas"] = spec.replicas
    return with_hash({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(body), "spec": dep_spec})


def service(body: dict, cfg: OperatorConfig) -> dict:
    name = body["metadata"]["name"]
    ports = [("http", cfg.http_port), ("grpc", cfg.grpc_port), ("metrics", cfg.metrics_port)]
    return with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(body),
            "spec": {
                "selector": selector(name),
                "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports],
            },
        }
    )


def disruption_budget(body: dict, spec: ModelSpec, api_version: str) -> dict | None:
    """One pod may go at a time (a GPU Operator driver upgrade drains nodes); none below 2 replicas."""
    replicas = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
    if replicas < 2:
        return None
    name = body["metadata"]["name"]
    return with_hash(
        {
            "apiVersion": api_version,
            "kind": "PodDisruptionBudget",
            "metadata": _meta(body),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name)}},
        }
    )


def autoscaler(body: dict, spec: ModelSpec) -> dict | None:
    if spec.autoscaling is None:
        return None
    name = body["metadata"]["name"]
    return with_hash(
        {
            "apiVersion": "autoscaling/v1",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(body),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": spec.autoscaling.min_replicas,
                "maxReplicas": spec.autoscaling.max_replicas,
                "targetCPUUtilizationPercentage": spec.autoscaling.target_cpu,
            },
        }
    )
