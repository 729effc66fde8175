"""RBAC from evidence: each ServiceAccount's Role grants exactly the (verb, resource) pairs its code used.

The chart is installed on the real API server (which runs with RBAC and an audit log). The one
component that calls the Kubernetes API, the KFP train step's hand-off to the Kubeflow Trainer
(src/taskloom/train/trainjob.py), then runs its real code paths as the pipeline runner's
ServiceAccount, with that account's own token: a TrainJob that completes (create, then get until done)
and one that overruns (create, get, delete). A thread plays the Trainer, as admin. The audit log says
what the account did; the chart's Roles must grant exactly that, and `kubectl auth can-i --as` must
refuse everything else. The ModelDeployment operator (`taskloom operator`) runs the same way with its own
ServiceAccount's token through a ModelDeployment's whole life (an older CRD made current at start, create,
scale to a PDB, autoscale, drift of a child, delete through the finalizer); its Role and ClusterRole must
grant exactly what it used. The other workloads
call no API at all: they get no token and no rights.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time

import pytest
import yaml
from cluster_env import CHART, REPO

from taskloom.errors import UserError
from taskloom.operator.crd import revision, shipped
from taskloom.operator.declare import Declaration
from taskloom.operator.declare import deploy as declare
from taskloom.train import trainjob

pytestmark = pytest.mark.cluster

NS = "tl-rbac"
RUNNER = "pipeline-runner"
RUNNER_USER = f"system:serviceaccount:{NS}:{RUNNER}"
OPERATOR = "taskloom-operator"
OPERATOR_USER = f"system:serviceaccount:{NS}:{OPERATOR}"
# Needed only where the OwnerReferencesPermissionEnforcement admission plugin runs (children carry
# blockOwnerDeletion); the plugin checks it without a request of its own, so the audit log never shows it.
ADMISSION_ONLY = {("update", "taskloom.dev/modeldeployments/finalizers")}
CRD_NAME = "modeldeployments.taskloom.dev"
OLD_CRD = REPO / "tests" / "data" / "crds" / "modeldeployments.taskloom.dev-rev1.yaml"


def sa_kubeconfig(cluster, tmp_path, sa: str) -> str:
    """A kubeconfig that authenticates with the ServiceAccount's own token (not impersonation)."""
    def token():
        for s in cluster.get("secrets", "-n", NS)["items"]:
            ann = s["metadata"].get("annotations", {})
            if s["type"] == "kubernetes.io/service-account-token" and ann.get("kubernetes.io/service-account.name") == sa:
                return base64.b64decode(s["data"]["token"]).decode()
        return None
    tok = cluster.wait(f"a token for {sa}", token)
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": sa, "user": {"token": tok}}]
    admin["contexts"] = [{"name": sa, "context": {"cluster": "testenv", "user": sa, "namespace": NS}}]
    admin["current-context"] = sa
    path = tmp_path / f"{sa}.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    return str(path)


def play_trainer(cluster, name: str, outcome: str, out_dir=None):
    """Stand in for the Trainer's controller: write the job's metrics, then set its Complete condition."""
    api = cluster.api()
    from kubernetes import client

    objs = client.CustomObjectsApi(api)
    for _ in range(200):
        try:
            obj = objs.get_namespaced_custom_object(trainjob.GROUP, trainjob.VERSION, NS, trainjob.PLURAL, name)
            break
        except client.exceptions.ApiException:
            time.sleep(0.1)
    else:
        return
    if outcome != "Complete":
        return
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps({"task": "rt-sentiment", "metric": "accuracy",
                                                          "base": 0.75, "tuned": 0.82}))
    obj["status"] = {"conditions": [{"type": "Complete", "status": "True", "reason": "JobsCompleted",
                                     "message": "done", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    objs.replace_namespaced_custom_object_status(trainjob.GROUP, trainjob.VERSION, NS, trainjob.PLURAL, name, obj)


def granted_pairs(cluster, user_ns: str, sa: str) -> set[tuple[str, str]]:
    """(verb, group/resource) pairs the Roles bound to the ServiceAccount in NS, and the ClusterRoles bound
    to it cluster-wide, grant."""
    pairs = set()
    bindings = [*cluster.get("rolebindings", "-n", NS)["items"], *cluster.get("clusterrolebindings")["items"]]
    for rb in bindings:
        if not any(s.get("kind") == "ServiceAccount" and s["name"] == sa and s.get("namespace") == user_ns
                   for s in rb.get("subjects") or []):
            continue
        role = cluster.get(rb["roleRef"]["kind"].lower(), rb["roleRef"]["name"], "-n", NS)
        for rule in role["rules"]:
            for g in rule.get("apiGroups", [""]):
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        pairs.add((v, f"{g}/{r}" if g else r))
    return pairs


def used_pairs(cluster, user: str, allowed_only: bool = False) -> set[tuple[str, str]]:
    used = set()
    for ev in cluster.audit():
        if ev.get("user", {}).get("username") != user or not ev.get("objectRef"):
            continue
        if allowed_only and (ev.get("responseStatus") or {}).get("code") == 403:
            continue
        ref = ev["objectRef"]
        g = ref.get("apiGroup", "")
        res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        used.add((ev["verb"], f"{g}/{res}" if g else res))
    return used


def exercise_operator(cluster, tmp_path) -> None:
    """`taskloom operator` with the operator ServiceAccount's token through one ModelDeployment's life."""
    from taskloom.serve.repository import build_repository

    repo = build_repository("minilm", tmp_path / "models")
    env = cluster.env(KUBECONFIG=sa_kubeconfig(cluster, tmp_path, OPERATOR), TASKLOOM_OPERATOR_INTERVAL="1")
    env.pop("TASKLOOM_TRITON_ADMIN_KEY", None)
    name = "rbac-md"

    def apply(**spec):
        md = {"apiVersion": "taskloom.dev/v1alpha1", "kind": "ModelDeployment",
              "metadata": {"name": name, "namespace": NS},
              "spec": {"model": {"name": "taskloom", "repository": str(repo)}, "replicas": 1, **spec}}
        cluster.apply(md)

    def exists(kind: str) -> bool:
        return cluster.kubectl("get", kind, name, "-n", NS, check=False).returncode == 0

    def annotated(kind: str) -> bool:
        ann = cluster.get(kind, name, "-n", NS)["metadata"].get("annotations") or {}
        return ann.get("taskloom.dev/desired-hash") not in (None, "stale")

    # the previous chart's CRD, as `helm upgrade` leaves it: the operator replaces it at start (get, update)
    old = yaml.safe_load(OLD_CRD.read_text())
    old["metadata"]["resourceVersion"] = cluster.get("crd", CRD_NAME)["metadata"]["resourceVersion"]
    cluster.kubectl("replace", "-f", "-", input=yaml.safe_dump(old))

    log = open(tmp_path / "operator.log", "ab")
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "taskloom"), "operator", "--namespace", NS],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        apply()
        cluster.wait("the Deployment and Service", lambda: exists("deployment") and exists("service"), timeout=90)
        assert revision(cluster.get("crd", CRD_NAME)) == revision(shipped())
        cluster.wait("a status", lambda: (cluster.get("modeldeployment", name, "-n", NS).get("status") or {})
                     .get("conditions"), timeout=60)
        for kind in ("service", "deployment"):  # drift of a child: patched back
            cluster.kubectl("annotate", "--overwrite", kind, name, "-n", NS, "taskloom.dev/desired-hash=stale")
            cluster.wait(f"the {kind} patched back", lambda k=kind: annotated(k), timeout=60)
        apply(replicas=2)
        cluster.wait("a PDB", lambda: exists("pdb"), timeout=60)
        apply(replicas=2, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 3})
        cluster.wait("an HPA", lambda: exists("hpa"), timeout=60)
        for kind in ("pdb", "hpa"):
            cluster.kubectl("annotate", "--overwrite", kind, name, "-n", NS, "taskloom.dev/desired-hash=stale")
            cluster.wait(f"the {kind} patched back", lambda k=kind: annotated(k), timeout=60)
        apply()
        cluster.wait("the PDB and HPA deleted", lambda: not exists("pdb") and not exists("hpa"), timeout=60)
        cluster.kubectl("delete", "modeldeployment", name, "-n", NS, "--wait=false")
        cluster.wait("the finalizer removed", lambda: not exists("modeldeployment"), timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    print((tmp_path / "operator.log").read_text()[-3000:])


def can_i(cluster, user: str, verb: str, resource: str) -> bool:
    out = cluster.kubectl("auth", "can-i", verb, resource, "-n", NS, f"--as={user}", check=False)
    return out.stdout.strip() == "yes"


def test_each_service_account_holds_exactly_what_its_code_used(cluster, tmp_path, monkeypatch):
    cluster.kubectl("create", "namespace", NS)
    cluster.kubectl("create", "secret", "generic", "taskloom-webhook", "-n", NS, "--from-literal=secret=x")
    cluster.kubectl("create", "serviceaccount", RUNNER, "-n", NS)  # KFP's runner, in a single-namespace setup
    cluster.helm("install", "taskloom", str(CHART), "-n", NS, "-f", str(CHART / "ci" / "gpu-operator-values.yaml"),
                 "--set", f"rbac.pipelineRunner.namespace={NS}")
    # the step finds its credentials as it would on a laptop: the kubeconfig (the client reads $KUBECONFIG at import)
    runner_config = sa_kubeconfig(cluster, tmp_path, RUNNER)
    monkeypatch.setenv("KUBECONFIG", runner_config)
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", runner_config)

    # 1. A hand-off that completes: the real train_on_trainer, staging through a shared folder.
    shared = tmp_path / "shared"
    shared.mkdir()
    task = tmp_path / "task"
    task.mkdir()
    (task / "task.yaml").write_text("name: rt-sentiment\n")
    name = trainjob.trainjob_name("rt-sentiment")
    monkeypatch.setattr(trainjob, "trainjob_name", lambda t: name)
    helper = threading.Thread(target=play_trainer, args=(cluster, name, "Complete",
                                                          shared / "trainjobs" / name / "out"))
    helper.start()
    metrics = trainjob.train_on_trainer(task, tmp_path / "out", task="rt-sentiment", nodes=2, gpus_per_node=4,
                                        train_args=["--epochs", "1"], namespace=NS, shared_dir=shared,
                                        timeout_s=60, poll_s=0.2)
    helper.join()
    assert metrics["trainjob"] == name and metrics["tuned"] == 0.82

    # 2. A hand-off that overruns: the step deletes its TrainJob before failing.
    late = {**trainjob.trainjob_manifest("tl-late-0001", ["/mnt/taskloom/t/task.yaml"], "/mnt/taskloom/o",
                                         nodes=2, gpus_per_node=1, train_args=[], task="late", run_id="")}
    with pytest.raises(trainjob.TrainJobError, match="not finished after .* deleted it"):
        trainjob.submit_and_wait(late, NS, timeout_s=1.0, poll_s=0.2)

    # 3. The deploy step's declaration (taskloom.operator.declare, as steps.deploy_step calls it): create the
    #    ModelDeployment, then patch it to the next version. No operator serves it here, so each wait ends
    #    in its timeout, one line as the step reports it.
    for version in (1, 2):
        declared = Declaration(model="taskloom", repository="/mnt/taskloom/model_repository", version=version,
                               keep_adapters=False)
        with pytest.raises(UserError, match="not Ready after"):
            declare(declared, NS, "rbac-md", timeout=0.5)
    assert cluster.get("modeldeployment", "rbac-md", "-n", NS)["spec"]["model"]["version"] == "2"
    cluster.kubectl("delete", "modeldeployment", "rbac-md", "-n", NS)  # no finalizer yet: no operator saw it

    time.sleep(1.5)  # the audit log is written asynchronously in batches
    used = cluster.wait("the runner's requests in the audit log",
                        lambda: used_pairs(cluster, RUNNER_USER) if ("delete", "trainer.kubeflow.org/trainjobs")
                        in used_pairs(cluster, RUNNER_USER) else None, timeout=30)
    granted = granted_pairs(cluster, NS, RUNNER)
    assert used == {("create", "trainer.kubeflow.org/trainjobs"), ("get", "trainer.kubeflow.org/trainjobs"),
                    ("delete", "trainer.kubeflow.org/trainjobs"), ("get", "taskloom.dev/modeldeployments"),
                    ("create", "taskloom.dev/modeldeployments"), ("patch", "taskloom.dev/modeldeployments")}
    assert granted == used, f"granted but never used: {granted - used}; used but not granted: {used - granted}"

    for verb, resource in sorted(granted):
        assert can_i(cluster, RUNNER_USER, verb, resource.split("/")[1] + "." + resource.split("/")[0])
    refused = [("list", "trainjobs.trainer.kubeflow.org"), ("patch", "trainjobs.trainer.kubeflow.org"),
               ("update", "trainjobs.trainer.kubeflow.org"), ("get", "secrets"), ("create", "pods"),
               ("patch", "deployments.apps"), ("get", "deployments.apps"), ("create", "trainingruntimes.trainer.kubeflow.org"),
               ("create", "rolebindings.rbac.authorization.k8s.io"), ("delete", "modeldeployments.taskloom.dev"),
               ("list", "modeldeployments.taskloom.dev"), ("update", "modeldeployments.taskloom.dev")]
    for verb, resource in refused:
        assert not can_i(cluster, RUNNER_USER, verb, resource), f"{RUNNER} may {verb} {resource}"

    # 4. The operator, as its ServiceAccount: its Role grants what it used (and the admission-only right).
    exercise_operator(cluster, tmp_path)
    time.sleep(1.5)
    used = cluster.wait("the operator's requests in the audit log",
                        lambda: used_pairs(cluster, OPERATOR_USER, allowed_only=True)
                        if ("delete", "policy/poddisruptionbudgets") in used_pairs(cluster, OPERATOR_USER) else None,
                        timeout=30)
    denied = used_pairs(cluster, OPERATOR_USER) - used
    granted = granted_pairs(cluster, NS, OPERATOR)
    assert granted == used | ADMISSION_ONLY, (f"granted but never used: {granted - used - ADMISSION_ONLY}; "
                                              f"used but not granted: {used - granted}; denied: {denied}")
    for verb, resource in [("delete", "services"), ("delete", "deployments.apps"), ("get", "secrets"),
                           ("create", "pods"), ("delete", "modeldeployments.taskloom.dev"),
                           ("create", "rolebindings.rbac.authorization.k8s.io"), ("list", "configmaps"),
                           ("create", "customresourcedefinitions.apiextensions.k8s.io"),
                           ("list", "customresourcedefinitions.apiextensions.k8s.io"),
                           ("delete", f"customresourcedefinitions.apiextensions.k8s.io/{CRD_NAME}"),
                           ("update", "customresourcedefinitions.apiextensions.k8s.io/trainjobs.trainer.kubeflow.org")]:
        assert not can_i(cluster, OPERATOR_USER, verb, resource), f"{OPERATOR} may {verb} {resource}"
    for verb in ("get", "update"):  # the one CRD it keeps current, by name
        assert can_i(cluster, OPERATOR_USER, verb, f"customresourcedefinitions.apiextensions.k8s.io/{CRD_NAME}")

    # The chart's other workloads call no API: no token mounted, no Role bound, every request refused.
    sas = [s["metadata"]["name"] for s in cluster.get("serviceaccounts", "-n", NS,
                                                      "-l", "app.kubernetes.io/instance=taskloom")["items"]
           if s["metadata"]["name"] != OPERATOR]
    assert len(sas) >= 5
    for sa in sas:
        user = f"system:serviceaccount:{NS}:{sa}"
        assert granted_pairs(cluster, NS, sa) == set()
        for verb, resource in [("get", "pods"), ("list", "secrets"), ("get", "configmaps"), ("create", "trainjobs.trainer.kubeflow.org"),
                               ("patch", "deployments.apps"), ("get", "modeldeployments")]:
            assert not can_i(cluster, user, verb, resource), f"{sa} may {verb} {resource}"
        assert used_pairs(cluster, user) == set()
    for pod in cluster.get("pods", "-n", NS)["items"]:
        if pod["spec"].get("serviceAccountName") != OPERATOR:
            assert pod["spec"]["automountServiceAccountToken"] is False, pod["metadata"]["name"]
    cluster.helm("uninstall", "taskloom", "-n", NS)
