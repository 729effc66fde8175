"""Every pod the chart makes meets the Pod Security Standard "restricted", checked by a policy tool.

The test tier's API server has no PodSecurity admission, so checkov (in .venv-policy, from `make tools`)
checks the rendered chart instead: `helm template` once per charts/taskloom/ci/*-values.yaml (the
chart-testing values files; defaults plus the required HMAC Secret name when there are none), then
checkov's Kubernetes checks that correspond to the standard's controls, expecting zero failures:

| Pod Security control (baseline + restricted)   | checkov check                                          |
|------------------------------------------------|--------------------------------------------------------|
| Host namespaces (hostPID, hostIPC, hostNetwork)| CKV_K8S_17, CKV_K8S_18, CKV_K8S_19                     |
| Privileged containers                          | CKV_K8S_16                                             |
| Capabilities: drop ALL, add none               | CKV_K8S_37 (drop ALL), CKV_K8S_28 (NET_RAW dropped),   |
|                                                | CKV_K8S_25 (none added), CKV_K8S_39 (no SYS_ADMIN)     |
| Host ports                                     | CKV_K8S_26                                             |
| HostPath volumes                               | CKV_K8S_27 (the docker socket); all hostPath: below    |
| Privilege escalation                           | CKV_K8S_20 (allowPrivilegeEscalation: false)           |
| Running as non-root                            | CKV_K8S_23 (runAsNonRoot, no runAsUser 0)              |
| Seccomp                                        | CKV_K8S_31 (RuntimeDefault)                            |
| a securityContext at all, pod and container    | CKV_K8S_29, CKV_K8S_30                                 |

Left out on purpose, as they are not part of the standard: CKV_K8S_40 (UID above 10000; the images run as
1000), CKV_K8S_22 (read-only root file system: Triton's python backend and the Hugging Face caches write),
CKV_K8S_43 (image digests), CKV_K8S_15 (pull policy Always), CKV_K8S_35 (Secrets as files: the monitor
reads its key from the env), CKV_K8S_21 (default namespace), resource and probe checks (the chart tests
check those). CKV_K8S_1-7, _32 and _36 are the same controls for the removed PodSecurityPolicy kind.

The standard's controls without a checkov check (volume types, hostProcess, procMount, sysctls, SELinux
type, AppArmor) are checked in Python. checkov reads only built-in kinds, so the pods that Argo Events
(EventSource, Sensor) and the Kubeflow Trainer (TrainingRuntime) make from the chart's templates are
handed to it as Pods built from those templates.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskloom"
CHECKOV = REPO / ".venv-policy" / "bin" / "checkov"
HELM = REPO / ".tools" / "helm"
CHECKS = ["CKV_K8S_16", "CKV_K8S_17", "CKV_K8S_18", "CKV_K8S_19", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_25",
          "CKV_K8S_26", "CKV_K8S_27", "CKV_K8S_28", "CKV_K8S_29", "CKV_K8S_30", "CKV_K8S_31", "CKV_K8S_37",
          "CKV_K8S_39"]
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

pytestmark = pytest.mark.skipif(not CHECKOV.exists() or not HELM.exists(),
                                reason=".venv-policy (checkov) or .tools/helm missing: run `make tools`")


def render(values: Path | None) -> list[dict]:
    args = [str(HELM), "template", "taskloom", str(CHART), "--namespace", "ml"]
    args += ["-f", str(values)] if values else ["--set", "events.hmacSecret.name=taskloom-webhook"]
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _pod(name: str, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ml"}, "spec": spec}


def pods_of_custom_resources(docs: list[dict]) -> list[dict]:
    """The pods Argo Events and the Trainer create from the chart's templates, as plain Pods."""
    pods = []
    for d in docs:
        name = f"{d['kind'].lower()}-{d['metadata']['name']}"
        if d["apiVersion"].startswith("argoproj.io/"):
            t = d["spec"].get("template", {})
            container = {"name": "main", "image": "quay.io/argoproj/argo-events:v1.9.6", **t.get("container", {})}
            pods.append(_pod(name, {"serviceAccountName": t.get("serviceAccountName"), "automountServiceAccountToken": False,
                                    "securityContext": t.get("securityContext", {}), "containers": [container]}))
        elif d["kind"] in ("TrainingRuntime", "ClusterTrainingRuntime"):
            for job in d["spec"]["template"]["spec"]["replicatedJobs"]:
                pods.append(_pod(f"{name}-{job['name']}", job["template"]["spec"]["template"]["spec"]))
    return pods


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    out = []
    for d in docs:
        if d["kind"] == "Pod":
            out.append((d["metadata"]["name"], d["spec"]))
        elif d["kind"] == "CronJob":
            out.append((d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif d["kind"] in WORKLOADS:
            out.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
    return out


@pytest.fixture(scope="module", params=VALUES or [None], ids=lambda v: v.name if v else "defaults")
def manifests(request, tmp_path_factory) -> tuple[Path, list[dict]]:
    docs = render(request.param)
    docs += pods_of_custom_resources(docs)
    folder = tmp_path_factory.mktemp("rendered")
    (folder / "chart.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return folder, docs


def test_checkov_finds_no_pod_security_failures(manifests):
    folder, docs = manifests
    assert len(pod_specs(docs)) >= 5  # the Deployments and the custom resources' pods are all in there
    r = subprocess.run([str(CHECKOV), "--directory", str(folder), "--framework", "kubernetes", "--check", ",".join(CHECKS),
                        "--output", "json", "--compact", "--skip-download"],
                       capture_output=True, text=True, timeout=300, cwd=folder)
    assert r.stdout.strip(), r.stderr[-2000:]
    report = json.loads(r.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
              for rep in reports for c in rep.get("results", {}).get("failed_checks", [])]
    assert failed == [], "\n".join(failed)
    passed = {c["check_id"] for rep in reports for c in rep.get("results", {}).get("passed_checks", [])}
    assert passed == set(CHECKS), f"checks that checked nothing: {sorted(set(CHECKS) - passed)}"


def test_controls_checkov_has_no_check_for(manifests):
    _, docs = manifests
    for name, spec in pod_specs(docs):
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        for v in spec.get("volumes", []):
            kinds = set(v) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{name}: volume {v['name']} is {kinds}"
        pod_ctx = spec.get("securityContext", {})
        assert not pod_ctx.get("sysctls"), name
        assert pod_ctx.get("seLinuxOptions", {}).get("type") in (None, "", "container_t", "container_init_t"), name
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            ctx = c.get("securityContext", {})
            assert ctx.get("procMount") in (None, "Default"), f"{name}/{c['name']}"
            assert not ctx.get("windowsOptions", {}).get("hostProcess"), f"{name}/{c['name']}"
            assert ctx.get("runAsUser", pod_ctx.get("runAsUser")) != 0, f"{name}/{c['name']}"
            assert set(ctx.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, f"{name}/{c['name']}"
            assert ctx.get("seccompProfile", pod_ctx.get("seccompProfile", {})).get("type") in ("RuntimeDefault", "Localhost")


def test_a_privileged_pod_is_caught():
    """The check list is not vacuous: checkov fails a pod that breaks the standard."""
    bad = _pod("bad", {"hostNetwork": True, "containers": [{"name": "c", "image": "x:1", "securityContext": {
        "privileged": True, "allowPrivilegeEscalation": True, "runAsUser": 0}}]})
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        Path(d, "bad.yaml").write_text(yaml.safe_dump(bad))
        r = subprocess.run([str(CHECKOV), "--directory", d, "--framework", "kubernetes", "--check", ",".join(CHECKS),
                            "--output", "json", "--quiet", "--compact", "--skip-download"],
                           capture_output=True, text=True, timeout=300, cwd=d)
    failed = {c["check_id"] for c in json.loads(r.stdout)["results"]["failed_checks"]}
    assert {"CKV_K8S_16", "CKV_K8S_19", "CKV_K8S_20", "CKV_K8S_23", "CKV_K8S_31", "CKV_K8S_37"} <= failed
