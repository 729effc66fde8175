"""What KFP creates from the compiled pipelines is valid on a real API server.

Each executor of each golden pipeline (pipelines/compiled/*.yaml) becomes the Pod KFP's driver would
make of it: the container's image, command, args, env and resources (the accelerator as a
`nvidia.com/gpu` limit), and the kfp-kubernetes platform settings (node selector, tolerations, the
shared claim). Each is sent to the server as a dry run (admission and validation, nothing stored), and
GPU steps are checked to be placeable: they tolerate the GPU Operator's taint and select its nodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from cluster_env import GPU_TAINT, REPO

pytestmark = pytest.mark.cluster

COMPILED = sorted((REPO / "pipelines" / "compiled").glob("*.yaml"))
NS = "tl-pipelines"


def executor_pods(path: Path) -> list[dict]:
    spec, *rest = [d for d in yaml.safe_load_all(path.read_text()) if d]
    platform = rest[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if rest else {}
    pods = []
    for name, executor in spec["deploymentSpec"]["executors"].items():
        c = executor["container"]
        res = c.get("resources", {})
        requests, limits = {}, {}
        if "resourceCpuRequest" in res:
            requests["cpu"] = res["resourceCpuRequest"]
        if "resourceMemoryRequest" in res:
            requests["memory"] = res["resourceMemoryRequest"]
        if "resourceMemoryLimit" in res:
            limits["memory"] = res["resourceMemoryLimit"]
        acc = res.get("accelerator")
        if acc:
            limits[acc["resourceType"]] = str(acc["resourceCount"])
        k8s = platform.get(name, {})
        volumes, mounts = [], []
        for i, pvc in enumerate(k8s.get("pvcMount", [])):
            volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": pvc["constant"]}})
            mounts.append({"name": f"pvc-{i}", "mountPath": pvc["mountPath"]})
        pod_spec = {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": c["image"], "command": c.get("command", []),
                            "args": c.get("args", []), "env": c.get("env", []),
                            "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
                            "volumeMounts": mounts}],
            "volumes": volumes,
        }
        if k8s.get("nodeSelector"):
            pod_spec["nodeSelector"] = k8s["nodeSelector"]["labels"]
        if k8s.get("tolerations"):
            pod_spec["tolerations"] = k8s["tolerations"]
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"{path.stem}-{name}".replace("_", "-")[:63], "namespace": NS},
                     "spec": pod_spec})
    return pods


@pytest.mark.parametrize("path", COMPILED, ids=[p.stem for p in COMPILED])
def test_compiled_pipeline_pods_are_accepted_by_the_api_server(cluster, path):
    if cluster.kubectl("get", "namespace", NS, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", NS)
    pods = executor_pods(path)
    assert pods
    out = cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                          input=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
    accepted, text = [], out.stdout.strip()  # kubectl prints one JSON object per created item
    while text:
        obj, end = json.JSONDecoder().raw_decode(text)
        accepted.append(obj)
        text = text[end:].strip()
    assert len(accepted) == len(pods)
    for pod in accepted:
        spec = pod["spec"]
        gpu = "nvidia.com/gpu" in json.dumps(spec["containers"][0].get("resources", {}))
        if gpu:
            assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert any(t["key"] == GPU_TAINT["key"] and t["effect"] == GPU_TAINT["effect"] for t in spec["tolerations"])
            env = {e["name"]: e.get("value") for e in spec["containers"][0].get("env", [])}
            assert env.get("TASKLOOM_REQUIRE_CUDA") == "1", "a GPU step must refuse to train on CPU"
    # nothing was stored
    assert cluster.get("pods", "-n", NS)["items"] == []
