"""The cluster tier's fixtures: a real kube-apiserver, controller manager and scheduler on loopback
(scripts/k8s-testenv), with the nodes of a GPU Operator cluster and the third-party CRDs a cluster
running taskloom has (Argo Events, the Kubeflow Trainer) applied first.

There is no kubelet: Pods are created by the controller manager and bound by the scheduler, and stay
Pending. Tests of this tier are marked `cluster` (`make test-cluster`); the `cluster` fixture is in conftest.py."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskloom"
TOOLS = REPO / ".tools"
TESTENV = REPO / "scripts" / "k8s-testenv"
ARGO_CRDS = sorted((REPO / "tests" / "data" / "argo-events").glob("argoproj.io_*.yaml"))
TRAINER_SCHEMAS = REPO / "manifests" / "crds"

# Two GPU Operator nodes (its feature-discovery labels, its taint, allocatable nvidia.com/gpu) and two CPU nodes.
GPU_NODES = {"gpu-a": 4, "gpu-b": 2}
CPU_NODES = ["cpu-a", "cpu-b"]
GPU_LABELS = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
              "nvidia.com/gpu.count": "", "nvidia.com/mig.config": "all-disabled",
              "nvidia.com/gpu.deploy.device-plugin": "true"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@dataclass
class Cluster:
    """A running test control plane: its kubeconfig, state folder (audit log) and an admin API client."""

    dir: Path
    kubeconfig: Path

    def env(self, **extra: str) -> dict:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), **extra}

    def run(self, *cmd: str, check: bool = True, input: str | None = None, env: dict | None = None,
            timeout: float = 300):
        out = subprocess.run(list(cmd), capture_output=True, text=True, input=input, cwd=REPO,
                             env=env or self.env(), timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
        return out

    def kubectl(self, *args: str, check: bool = True, input: str | None = None):
        return self.run(str(TOOLS / "kubectl"), *args, check=check, input=input)

    def helm(self, *args: str, check: bool = True):
        return self.run(str(TOOLS / "helm"), *args, check=check)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, objs: list[dict] | dict) -> None:
        objs = objs if isinstance(objs, list) else [objs]
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))

    def api(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def wait(self, what: str, check, timeout: float = 60.0, every: float = 0.5):
        """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` s."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            last = check()
            if last:
                return last
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")

    def audit(self) -> list[dict]:
        return [json.loads(line) for line in (self.dir / "audit.jsonl").read_text().splitlines() if line.strip()]


def trainer_crd(plural: str, kind: str, scope: str, schema_file: str) -> dict:
    """A CRD for a Kubeflow Trainer kind from the published schema kept in manifests/crds/: CEL rules
    (x-kubernetes-validations, newer than this server) and empty defaults dropped, and the parts that schema cuts to a bare
    `type: object` kept whole rather than pruned."""

    def structural(node):
        if isinstance(node, dict):
            node.pop("x-kubernetes-validations", None)
            if node.get("default", 0) in ("", None):  # v1.20 reads an empty-string default as null and refuses it
                del node["default"]
            if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
                node["x-kubernetes-preserve-unknown-fields"] = True
            for v in node.values():
                structural(v)
        elif isinstance(node, list):
            for v in node:
                structural(v)
        return node

    schema = structural(copy.deepcopy(yaml.safe_load((TRAINER_SCHEMAS / schema_file).read_text())))
    schema["properties"]["metadata"] = {"type": "object"}  # the server owns metadata's schema
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.trainer.kubeflow.org"},
        "spec": {"group": "trainer.kubeflow.org", "scope": scope,
                 "names": {"plural": plural, "singular": kind.lower(), "kind": kind, "listKind": f"{kind}List"},
                 "versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema},
                               "subresources": {"status": {}}}]},
    }


def make_nodes(cluster: Cluster) -> None:
    """Nodes as the GPU Operator leaves them, Ready, without the not-ready taint the API server adds."""
    nodes = {**{n: g for n, g in GPU_NODES.items()}, **{n: 0 for n in CPU_NODES}}
    for name, gpus in nodes.items():
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
        if gpus:
            labels.update({**GPU_LABELS, "nvidia.com/gpu.count": str(gpus)})
        cluster.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
                       "spec": {"taints": [GPU_TAINT] if gpus else []}})
        allocatable = {"cpu": "16", "memory": "64Gi", "pods": "110", **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
        status = {"status": {"capacity": allocatable, "allocatable": allocatable, "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
             "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
        cluster.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
        cluster.kubectl("patch", "node", name, "--type=merge", "-p",
                        json.dumps({"spec": {"taints": [GPU_TAINT] if gpus else None}}))


def shared_volumes(cluster: Cluster, count: int = 12) -> None:
    """hostPath PersistentVolumes for the charts' claims (no provisioner here); the PV binder binds them."""
    for i in range(count):
        cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"shared-{i}"},
                       "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                                "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": f"/tmp/shared-{i}"}}})


