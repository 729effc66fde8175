"""Who can reach whom under the chart's NetworkPolicies, evaluated over `helm template` output.

The pods are the rendered workloads (their template labels and container ports) plus the pods that other
controllers make from the release: Argo Events' eventsource and sensor pods, the operator's Triton pods
(taskloom.operator.children, the real labels), a Kubeflow Trainer node, and the world around them: KFP run
pods, Prometheus, cluster DNS, the API server, strangers in the release namespace and in another namespace
wearing the release's labels. Every needed connection must be allowed and every other one denied.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from netpol import Cluster, Endpoint, selects

from taskloom.operator import children
from taskloom.operator.config import OperatorConfig
from taskloom.operator.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / ".tools" / "helm"
NS = "ml"
PROMETHEUS_PEER = '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]'
APPS_PEER = '[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"apps"}}}]'


def render(*sets: str) -> list[dict]:
    assert HELM.exists(), f"{HELM} missing: run `make tools`"
    args = [str(HELM), "template", "taskloom", str(REPO / "charts" / "taskloom"), "--namespace", NS]
    for s in ("events.hmacSecret.name=taskloom-webhook", *sets):
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    for d in docs:
        d["metadata"].setdefault("namespace", NS)
    return docs


def _pod_from_template(name: str, template: dict, namespace: str = NS) -> Endpoint:
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"].get("containers", [])
        for p in c.get("ports", [])
        if "name" in p
    }
    return Endpoint(name, _ip(name), namespace, dict(template["metadata"]["labels"]), ports)


_IPS: dict[str, str] = {}


def _ip(name: str) -> str:
    return _IPS.setdefault(name, f"10.0.{len(_IPS) // 250}.{len(_IPS) % 250 + 1}")


def universe(docs: list[dict]) -> dict[str, Endpoint]:
    pods: dict[str, Endpoint] = {}
    for d in docs:
        if d["kind"] == "Deployment":
            component = d["metadata"]["labels"]["app.kubernetes.io/component"]
            pods[component] = _pod_from_template(component, d["spec"]["template"])
        elif d["kind"] == "TrainingRuntime":
            job = d["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
            pods["trainer"] = _pod_from_template("trainer", job)
            pods["trainer-2"] = _pod_from_template("trainer-2", job)
        elif d["kind"] == "EventSource":
            labels = {"eventsource-name": d["metadata"]["name"], "controller": "eventsource-controller"}
            pods["eventsource"] = Endpoint("eventsource", _ip("eventsource"), NS, labels, {})
        elif d["kind"] == "Sensor":
            labels = {"sensor-name": d["metadata"]["name"], "controller": "sensor-controller"}
            pods["sensor"] = Endpoint("sensor", _ip("sensor"), NS, labels, {})
    if any(d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator") for d in docs):
        spec = parse_spec({"model": {"name": "taskloom", "repository": "/shared/models"}, "replicas": 1})
        body = {"metadata": {"name": "rt", "namespace": NS, "uid": "u-1", "generation": 1}}
        pods["operator-triton"] = _pod_from_template(
            "operator-triton", children.deployment(body, spec, OperatorConfig(), 1, "r1")["spec"]["template"]
        )
    release_labels = dict(pods["monitor"].labels) if "monitor" in pods else {"app.kubernetes.io/instance": "taskloom"}
    outsiders = [
        Endpoint("pipeline", _ip("pipeline"), "kubeflow", {"pipelines.kubeflow.org/v2_component": "true"}),
        Endpoint("kubeflow-other", _ip("kubeflow-other"), "kubeflow", {"app": "ml-pipeline-ui"}),
        Endpoint("prometheus", _ip("prometheus"), "monitoring", {"app.kubernetes.io/name": "prometheus"}),
        Endpoint("app", _ip("app"), "apps", {"app": "client"}),
        Endpoint("dns", _ip("dns"), "kube-system", {"k8s-app": "kube-dns"}),
        Endpoint("stranger", _ip("stranger"), NS, {"app": "stranger"}),
        # another namespace's pod wearing the release's labels: selectors without a namespace must not admit it
        Endpoint("impostor", _ip("impostor"), "other", release_labels),
        Endpoint("apiserver", "172.20.0.10"),
        Endpoint("internet", "93.184.216.34"),
    ]
    pods.update({e.name: e for e in outsiders})
    return pods


NAMESPACES = {NS: {}, "kubeflow": {}, "monitoring": {}, "apps": {}, "kube-system": {}, "other": {}}
RELEASE = {
    "triton",
    "monitor",
    "feast",
    "gateway",
    "operator",
    "trainer",
    "trainer-2",
    "eventsource",
    "sensor",
    "operator-triton",
}
EGRESS_RESTRICTED = {"gateway", "monitor", "operator"}
PROBE_PORTS = [
    (8000, "TCP"),
    (8001, "TCP"),
    (8002, "TCP"),
    (6566, "TCP"),
    (8080, "TCP"),
    (9400, "TCP"),
    (12000, "TCP"),
    (29500, "TCP"),
    (443, "TCP"),
    (6443, "TCP"),
    (53, "UDP"),
    (53, "TCP"),
    (5432, "TCP"),
]


def needed(
    pods: dict[str, Endpoint], scrape: bool, inference: bool, api_anywhere: bool
) -> set[tuple[str, str, int, str]]:
    want = {
        ("monitor", "gateway", 8080),
        ("gateway", "eventsource", 12000),
        ("pipeline", "triton", 8000),
        ("pipeline", "triton", 8001),
        ("pipeline", "feast", 6566),
        ("monitor", "feast", 6566),
        ("operator", "operator-triton", 8000),
        ("operator", "apiserver", 443),
        ("operator", "apiserver", 6443),
    }
    if scrape:
        want |= {
            ("prometheus", "gateway", 8080),
            ("prometheus", "triton", 8002),
            ("prometheus", "monitor", 9400),
            ("prometheus", "operator-triton", 8002),
        }
    if inference:
        want |= {("app", t, p) for t in ("triton", "operator-triton") for p in (8000, 8001)}
    out = {(s, d, p, "TCP") for s, d, p in want if s in pods and d in pods}
    out |= {(s, "dns", 53, proto) for s in EGRESS_RESTRICTED for proto in ("UDP", "TCP") if s in pods}
    if api_anywhere:  # apiServer.cidrs [0.0.0.0/0]: the API server's ports at any address outside the release
        out |= {("operator", d, p, "TCP") for d in pods if d not in RELEASE for p in (443, 6443)}
    # the nodes of one TrainJob: torchrun's rendezvous and NCCL on ports chosen at run time
    out |= {
        (s, d, p, proto) for s, d in (("trainer", "trainer-2"), ("trainer-2", "trainer")) for p, proto in PROBE_PORTS
    }
    return out


def matrix(pods: dict[str, Endpoint], cluster: Cluster, want: set, egress_restricted: set[str]) -> list[str]:
    """Every (source, destination, port) that the policies decide differently from what the platform needs."""
    wrong = []
    for src in pods.values():
        for dst in pods.values():
            if src is dst or (not dst.is_pod and not src.is_pod):
                continue
            for port, proto in PROBE_PORTS:
                key = (src.name, dst.name, port, proto)
                # outside the release nothing is restricted but the egress of the restricted pods
                expect = key in want or (dst.name not in RELEASE and src.name not in egress_restricted)
                if cluster.allowed(src, dst, port, proto) != expect:
                    wrong.append(
                        f"{src.name} -> {dst.name}:{port}/{proto} {'should' if expect else 'should not'} connect"
                    )
    return wrong


@pytest.mark.parametrize(
    ("sets", "scrape", "inference", "restricted"),
    [
        ((), False, False, EGRESS_RESTRICTED),
        (('json:networkPolicy.apiServer.cidrs=["172.20.0.10/32"]',), False, False, EGRESS_RESTRICTED),
        ((f"json:metrics.scrapeFrom={PROMETHEUS_PEER}",), True, False, EGRESS_RESTRICTED),
        (("monitor.enabled=false", f"json:networkPolicy.inferenceFrom={APPS_PEER}"), False, True, EGRESS_RESTRICTED),
        (
            (
                "feast.registry.type=sql",
                "feast.registry.secret.name=f",
                "feast.onlineStore.type=redis",
                "feast.onlineStore.secret.name=f",
            ),
            False,
            False,
            {"gateway", "operator"},
        ),
    ],
    ids=["defaults", "api-server-cidr", "scrape-from", "no-monitor-inference", "feast-sql"],
)
def test_reachability_matrix(sets, scrape, inference, restricted):
    docs = render(*sets)
    pods = universe(docs)
    assert ("monitor" in pods) == ("monitor.enabled=false" not in sets)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for policy in policies:  # what the API server would accept, no unknown or mistyped field
        kubernetes_validate.validate(policy, "1.33", strict=True)
    cluster = Cluster(policies, NAMESPACES)
    want = needed(pods, scrape, inference, api_anywhere=not any("apiServer.cidrs" in s for s in sets))
    assert matrix(pods, cluster, want, restricted & set(pods)) == []


def test_every_release_pod_is_selected_by_an_ingress_policy():
    docs = render()
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = universe(docs)
    for name in RELEASE:
        assert any(selects(p["spec"]["podSelector"], pods[name].labels) for p in policies), name


def test_disabled_renders_no_policy():
    assert [d for d in render("networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"] == []


def test_pipeline_namespace_follows_the_runner_namespace():
    docs = render("rbac.pipelineRunner.namespace=team-a")
    pods = universe(docs)
    cluster = Cluster([d for d in docs if d["kind"] == "NetworkPolicy"], {**NAMESPACES, "team-a": {}})
    moved = Endpoint("pipeline-a", "10.9.0.1", "team-a", dict(pods["pipeline"].labels))
    assert cluster.allowed(moved, pods["triton"], 8000)
    assert not cluster.allowed(pods["pipeline"], pods["triton"], 8000)


# The evaluator itself, on hand-written policies: a bug in it must not let the matrix pass.


def _np(name: str, spec: dict, ns: str = "a") -> dict:
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}


A1 = Endpoint("a1", "10.1.0.1", "a", {"role": "db"}, {"pg": 5432})
A2 = Endpoint("a2", "10.1.0.2", "a", {"role": "web", "tier": "front"})
B1 = Endpoint("b1", "10.2.0.1", "b", {"role": "web"})
OUT = Endpoint("out", "203.0.113.7")


def test_evaluator_unselected_pods_are_open_and_a_selecting_policy_denies():
    open_cluster = Cluster([], {"a": {}, "b": {}})
    assert open_cluster.allowed(B1, A1, 5432) and open_cluster.allowed(OUT, A1, 1)
    deny = Cluster([_np("deny", {"podSelector": {"matchLabels": {"role": "db"}}})], {"a": {}, "b": {}})
    assert not deny.allowed(A2, A1, 5432)
    assert deny.allowed(A1, A2, 80)  # A2 is not selected; Ingress-only policy leaves A1's egress open


def test_evaluator_pod_and_namespace_selectors_and_named_ports():
    allow = _np(
        "allow",
        {
            "podSelector": {"matchLabels": {"role": "db"}},
            "ingress": [
                {
                    "from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}],
                    "ports": [{"port": "pg"}],
                },
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"team": "x"}},
                            "podSelector": {"matchLabels": {"role": "web"}},
                        }
                    ],
                    "ports": [{"port": 5000, "endPort": 5432}],
                },
            ],
        },
    )
    cluster = Cluster([allow], {"a": {}, "b": {"team": "x"}})
    assert cluster.allowed(A2, A1, 5432)
    assert not cluster.allowed(A2, A1, 5433)  # the name resolves to 5432 only
    assert not cluster.allowed(A2, A1, 5432, "UDP")
    assert cluster.allowed(B1, A1, 5100)  # namespace AND pod selector, port range
    b_web_wrong_ns = Cluster([allow], {"a": {}, "b": {"team": "y"}})
    assert not b_web_wrong_ns.allowed(B1, A1, 5100)
    # a podSelector without namespaceSelector means the policy's own namespace only
    impostor = Endpoint("imp", "10.3.0.1", "c", {"role": "web", "tier": "front"})
    assert not Cluster([allow], {"a": {}, "b": {"team": "x"}, "c": {}}).allowed(impostor, A1, 5432)


def test_evaluator_egress_ipblock_and_union():
    egress = _np(
        "egress",
        {
            "podSelector": {"matchLabels": {"role": "web"}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.7/32"]}}]}],
        },
    )
    second = _np(
        "second",
        {
            "podSelector": {"matchExpressions": [{"key": "role", "operator": "In", "values": ["web"]}]},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 5432}]}],
        },
    )
    only_first = Cluster([egress], {"a": {}, "b": {}})
    assert not only_first.allowed(A2, OUT, 443)  # excepted address
    assert only_first.allowed(A2, Endpoint("o2", "203.0.113.8"), 443)
    assert not only_first.allowed(A2, A1, 5432)
    both = Cluster([egress, second], {"a": {}, "b": {}})
    assert both.allowed(A2, A1, 5432)  # the union of the two policies
    assert not both.allowed(A2, B1, 5432)  # podSelector: {} is still the policy's namespace


def test_evaluator_empty_rules_deny_and_empty_peers_allow_all():
    none = Cluster([_np("none", {"podSelector": {}, "ingress": []})], {"a": {}, "b": {}})
    assert not none.allowed(B1, A1, 5432)
    everyone = Cluster([_np("all", {"podSelector": {}, "ingress": [{}]})], {"a": {}, "b": {}})
    assert everyone.allowed(B1, A1, 5432) and everyone.allowed(OUT, A2, 9)
    not_in = Cluster(
        [
            _np(
                "notin",
                {"podSelector": {"matchExpressions": [{"key": "role", "operator": "NotIn", "values": ["web"]}]}},
            )
        ],
        {"a": {}},
    )
    assert not not_in.allowed(A2, A1, 1) and not_in.allowed(A1, A2, 1)
