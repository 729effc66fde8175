"""The Helm chart installed for real on a real API server (v1.20, the cluster tier's control plane).

- `helm install` once per chart-testing values file (charts/taskloom/ci/*-values.yaml), the controller
  manager turns each Deployment into a ReplicaSet and Pods, the scheduler binds them: Triton on GPU
  Operator nodes when it asks for GPUs, on CPU nodes otherwise, and nothing else on the tainted GPU nodes;
- `helm upgrade` with changed values rolls out (more replicas, a PodDisruptionBudget of the API this
  server has), `helm uninstall` removes every object the release made;
- a pod asking for more GPUs than any node has stays Unschedulable;
- two releases of the same name in two namespaces install side by side (no cluster-scoped object);
- the chart refuses to install without an HMAC secret for the events.
"""

from __future__ import annotations

import json

import pytest
import yaml
from cluster_env import CHART, CPU_NODES, GPU_NODES

pytestmark = pytest.mark.cluster

VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
WORKLOADS = ("triton", "monitor", "feast", "gateway", "operator")


def prepare_namespace(cluster, ns: str) -> None:
    """What an operator of the cluster does before `helm install`: the namespace and the events' HMAC key."""
    if cluster.kubectl("get", "namespace", ns, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", ns)
    if cluster.kubectl("get", "secret", "taskloom-webhook", "-n", ns, check=False).returncode != 0:
        cluster.kubectl("create", "secret", "generic", "taskloom-webhook", "-n", ns, f"--from-literal=secret=test-{ns}")


def install(cluster, release: str, ns: str, *args: str) -> None:
    prepare_namespace(cluster, ns)
    cluster.helm("install", release, str(CHART), "-n", ns, *args)


def pods_of(cluster, ns: str, component: str) -> list[dict]:
    return cluster.get("pods", "-n", ns, "-l", f"app.kubernetes.io/component={component}")["items"]


def wait_pods(cluster, ns: str, component: str, count: int, bound: bool = True) -> list[dict]:
    """The controller manager made `count` pods for the component's Deployment (and the scheduler bound them)."""
    def ready():
        pods = [p for p in pods_of(cluster, ns, component) if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != count:
            return None
        if bound and not all(p["spec"].get("nodeName") for p in pods):
            return None
        return pods
    return cluster.wait(f"{count} {'bound ' if bound else ''}{component} pods in {ns}", ready, timeout=90)


def owner_chain(cluster, ns: str, pod: dict) -> tuple[str, str]:
    """Pod -> ReplicaSet -> Deployment, as the controller manager records it."""
    (rs_ref,) = pod["metadata"]["ownerReferences"]
    assert rs_ref["kind"] == "ReplicaSet"
    rs = cluster.get("replicaset", rs_ref["name"], "-n", ns)
    (dep_ref,) = rs["metadata"]["ownerReferences"]
    return rs_ref["name"], f"{dep_ref['kind']}/{dep_ref['name']}"


@pytest.mark.parametrize("values", VALUES, ids=[v.stem for v in VALUES])
def test_install_schedule_upgrade_uninstall(cluster, values):
    ns, release = f"tl-{values.stem.removesuffix('-values')}", "taskloom"
    spec = yaml.safe_load(values.read_text())
    gpus = spec["triton"]["gpus"]
    install(cluster, release, ns, "-f", str(values))

    status = json.loads(cluster.helm("status", release, "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    deployments = {d["metadata"]["name"] for d in cluster.get("deployments", "-n", ns)["items"]}
    assert {f"{release}-{w}" for w in WORKLOADS} <= deployments

    replicas = {"triton": spec["triton"].get("replicas", 1), "monitor": 1, "feast": 1, "gateway": 1, "operator": 1}
    for component in WORKLOADS:
        for pod in wait_pods(cluster, ns, component, replicas[component]):
            _, owner = owner_chain(cluster, ns, pod)
            assert owner == f"Deployment/{release}-{component}"
            node = pod["spec"]["nodeName"]
            if component == "triton" and gpus:
                assert node in GPU_NODES, f"a GPU Triton pod was bound to {node}"
                limits = pod["spec"]["containers"][0]["resources"]["limits"]
                assert limits["nvidia.com/gpu"] == str(gpus)
            else:
                assert node in CPU_NODES, f"{component} was bound to {node}, a GPU node"

    pdbs = cluster.get("poddisruptionbudgets", "-n", ns)["items"]
    if replicas["triton"] >= 2:
        (pdb,) = pdbs
        assert pdb["apiVersion"] == "policy/v1beta1"  # what a 1.20 server offers; policy/v1 where it exists
    else:
        assert pdbs == []

    if spec.get("trainer", {}).get("enabled", True):
        runtime = cluster.get("trainingruntimes", "-n", ns)["items"]
        assert [r["metadata"]["name"] for r in runtime] == ["taskloom-torch-distributed"]

    # Upgrade with changed values: one more Triton replica and a stricter alarm level.
    more = replicas["triton"] + 1
    cluster.helm("upgrade", release, str(CHART), "-n", ns, "-f", str(values), "--set", f"triton.replicas={more}",
                 "--set-json", "monitor.config.alpha=0.01")
    wait_pods(cluster, ns, "triton", more)
    assert len(cluster.get("poddisruptionbudgets", "-n", ns)["items"]) == 1
    config = cluster.get("configmap", f"{release}-config", "-n", ns)
    assert "0.01" in json.dumps(config["data"])
    assert json.loads(cluster.helm("status", release, "-n", ns, "-o", "json").stdout)["version"] == 2

    cluster.helm("uninstall", release, "-n", ns, "--wait", "--timeout", "120s")
    left = cluster.kubectl("get", "deployments,replicasets,services,roles,rolebindings,serviceaccounts,"
                           "poddisruptionbudgets,networkpolicies,configmaps", "-n", ns,
                           "-l", f"app.kubernetes.io/instance={release}", "-o", "name").stdout.split()
    assert left == []
    # the garbage collector deletes the pods the release's ReplicaSets owned; a bound pod then waits for its
    # kubelet to confirm (there is none here), so it is done as the kubelet would: force
    cluster.wait("pods garbage-collected", lambda: all(p["metadata"].get("deletionTimestamp")
                                                       for p in cluster.get("pods", "-n", ns)["items"]), timeout=90)
    cluster.kubectl("delete", "pods", "--all", "-n", ns, "--grace-period=0", "--force")
    # the shared claim outlives the release on purpose (helm.sh/resource-policy: keep): models and features
    assert cluster.kubectl("get", "pvc", "taskloom-shared", "-n", ns).returncode == 0


def test_a_pod_asking_for_more_gpus_than_any_node_has_stays_unschedulable(cluster):
    ns = "tl-overask"
    prepare_namespace(cluster, ns)
    too_many = max(GPU_NODES.values()) + 1
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big-train", "namespace": ns},
           "spec": {"containers": [{"name": "train", "image": "ghcr.io/taskloom/taskloom:0.1.0",
                                    "resources": {"limits": {"nvidia.com/gpu": str(too_many)}}}],
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}
    fits = {**pod, "metadata": {"name": "small-train", "namespace": ns},
            "spec": {**pod["spec"], "containers": [{**pod["spec"]["containers"][0],
                                                   "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    cluster.apply([pod, fits])

    def unschedulable():
        conds = cluster.get("pod", "big-train", "-n", ns).get("status", {}).get("conditions", [])
        return next((c for c in conds if c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"), None)

    cond = cluster.wait("big-train to be marked Unschedulable", unschedulable)
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert not cluster.get("pod", "big-train", "-n", ns)["spec"].get("nodeName")
    small = cluster.wait("small-train bound", lambda: cluster.get("pod", "small-train", "-n", ns)["spec"].get("nodeName"))
    assert small in GPU_NODES


def test_two_releases_in_two_namespaces_side_by_side(cluster):
    values = CHART / "ci" / "cpu-values.yaml"
    for ns in ("tl-team-a", "tl-team-b"):
        install(cluster, "taskloom", ns, "-f", str(values), "--set", "trainer.enabled=true")
    for ns in ("tl-team-a", "tl-team-b"):
        assert json.loads(cluster.helm("status", "taskloom", "-n", ns, "-o", "json").stdout)["info"]["status"] == "deployed"
        wait_pods(cluster, ns, "triton", 1)
    # nothing can collide: every object lives in its namespace, but for the operator's grant on its one CRD
    # (a ClusterRole and its binding), whose names carry the namespace
    cluster_scoped = {("ClusterRole", f"taskloom-{ns}-operator-crd") for ns in ("tl-team-a", "tl-team-b")}
    cluster_scoped |= {("ClusterRoleBinding", name) for _, name in cluster_scoped}
    for ns in ("tl-team-a", "tl-team-b"):
        manifest = [d for d in yaml.safe_load_all(cluster.helm("get", "manifest", "taskloom", "-n", ns).stdout) if d]
        assert len(manifest) > 10
        for obj in manifest:
            kind, name = obj["kind"], obj["metadata"]["name"]
            live = cluster.get(f"{kind}.{obj['apiVersion'].split('/')[0] if '/' in obj['apiVersion'] else ''}".rstrip("."),
                               name, "-n", ns)
            if (kind, name) in cluster_scoped:
                assert ns in name and live["metadata"]["annotations"]["meta.helm.sh/release-namespace"] == ns
            else:
                assert live["metadata"].get("namespace") == ns, f"{kind} {name} is cluster-scoped"
    for ns in ("tl-team-a", "tl-team-b"):
        cluster.helm("uninstall", "taskloom", "-n", ns)


def test_install_without_an_hmac_secret_is_refused(cluster):
    ns = "tl-nosecret"
    cluster.kubectl("create", "namespace", ns)
    out = cluster.helm("install", "taskloom", str(CHART), "-n", ns, "--set", "events.hmacSecret.name=", check=False)
    assert out.returncode != 0
    assert "hmacSecret" in out.stderr, out.stderr
    assert cluster.helm("list", "-n", ns, "-q").stdout.strip() == ""


def test_helm_installs_the_modeldeployment_crd_and_the_server_enforces_its_schema(cluster):
    ns = "tl-crd"
    install(cluster, "taskloom", ns, "-f", str(CHART / "ci" / "cpu-values.yaml"))
    crd = cluster.get("crd", "modeldeployments.taskloom.dev")
    assert crd["spec"]["names"]["kind"] == "ModelDeployment"
    good = {"apiVersion": "taskloom.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "rt", "namespace": ns},
            "spec": {"model": {"name": "rt-sentiment", "repository": "/mnt/taskloom/model_repository"},
                     "adapters": [{"name": "qa", "path": "/mnt/taskloom/adapters/qa", "sha256": "a" * 64}],
                     "replicas": 2, "gpusPerReplica": 1}}
    cluster.apply(good)
    stored = cluster.get("modeldeployment", "rt", "-n", ns)
    assert stored["spec"]["engine"] == "auto" and stored["spec"]["precision"] == "fp32"  # defaults by the server
    table = cluster.kubectl("get", "modeldeployments", "-n", ns).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "VERSION", "ADAPTERS", "READY", "REPLICAS", "AGE"]
    assert table[1].split()[:2] == ["rt", "rt-sentiment"]
    for field, bad in (("adapters", [{"name": "qa", "path": "/x", "sha256": "not-a-digest"}]),
                       ("engine", "tensorrt"), ("replicas", -1), ("model", {"name": "Bad Name"})):
        obj = {**good, "metadata": {"name": f"bad-{field}", "namespace": ns}, "spec": {**good["spec"], field: bad}}
        out = cluster.kubectl("apply", "-f", "-", input=json.dumps(obj), check=False)
        assert out.returncode != 0 and "is invalid" in out.stderr and f"spec.{field}" in out.stderr, (field, out.stderr)
    # helm never deletes CRDs (nor the resources users made of them) on uninstall
    cluster.helm("uninstall", "taskloom", "-n", ns)
    assert cluster.get("modeldeployment", "rt", "-n", ns)["metadata"]["name"] == "rt"
