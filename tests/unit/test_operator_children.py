"""Desired children of a ModelDeployment, computed without a cluster."""

from __future__ import annotations

import pytest

from taskloom.errors import UserError
from taskloom.operator import children
from taskloom.operator.config import OperatorConfig
from taskloom.operator.spec import parse_spec

BODY = {"metadata": {"name": "rt", "namespace": "ml", "uid": "u-1", "generation": 3}}
SPEC = {"model": {"name": "taskloom", "repository": "/shared/models"}, "replicas": 1}
DIGEST = "a" * 64


def test_deployment_carries_version_adapters_and_the_charts_start_command():
    spec = parse_spec({**SPEC, "adapters": [{"name": "senti", "path": "/shared/a/senti", "sha256": DIGEST}]})
    cfg = OperatorConfig(admin_secret="triton-admin")
    dep = children.deployment(BODY, spec, cfg, 4, "rev4")
    tmpl = dep["spec"]["template"]
    assert tmpl["metadata"]["annotations"][children.VERSION_ANNOTATION] == "4"
    assert tmpl["metadata"]["annotations"][children.ADAPTERS_ANNOTATION] == f"senti={DIGEST}"
    c = tmpl["spec"]["containers"][0]
    assert c["command"] == ["tritonserver"]
    assert "--model-control-mode=explicit" in c["args"] and "--load-model=taskloom" in c["args"]
    assert "--model-repository=/shared/models" in c["args"]
    assert any(a.startswith("--http-restricted-api=model-repository:") for a in c["args"])
    assert c["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "triton-admin"
    assert dep["spec"]["replicas"] == 1
    assert dep["metadata"]["ownerReferences"] == [children.owner_reference(BODY)]
    assert dep["spec"]["selector"]["matchLabels"] == {children.LABEL: "rt"}


def test_hash_changes_with_the_version_only_when_it_changes():
    spec = parse_spec(SPEC)
    a = children.deployment(BODY, spec, OperatorConfig(), 1, "r1")
    b = children.deployment(BODY, spec, OperatorConfig(), 1, "r1")
    c = children.deployment(BODY, spec, OperatorConfig(), 2, "r2")
    h = children.HASH_ANNOTATION
    assert a["metadata"]["annotations"][h] == b["metadata"]["annotations"][h] != c["metadata"]["annotations"][h]


def test_pdb_only_from_two_replicas_and_hpa_only_when_enabled():
    one = parse_spec(SPEC)
    two = parse_spec({**SPEC, "replicas": 2})
    assert children.disruption_budget(BODY, one, "policy/v1beta1") is None
    pdb = children.disruption_budget(BODY, two, "policy/v1beta1")
    assert pdb["apiVersion"] == "policy/v1beta1" and pdb["spec"]["maxUnavailable"] == 1
    assert children.autoscaler(BODY, two) is None
    auto = parse_spec({**SPEC, "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5}})
    hpa = children.autoscaler(BODY, auto)
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 5
    assert "replicas" not in children.deployment(BODY, auto, OperatorConfig(), 1, "r")["spec"]
    assert children.disruption_budget(BODY, auto, "policy/v1") is not None


def test_gpus_mig_and_shared_volume():
    spec = parse_spec({**SPEC, "gpusPerReplica": 1, "gpuSharing": {"mode": "mig", "migProfile": "1g.10gb"}})
    dep = children.deployment(BODY, spec, OperatorConfig(shared_claim="shared"), 1, "r")
    pod = dep["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared"
    assert pod["containers"][0]["volumeMounts"][0]["readOnly"] is True


def test_service_selects_the_pods_by_name():
    svc = children.service(BODY, OperatorConfig(http_port=9000))
    assert svc["spec"]["selector"] == {children.LABEL: "rt"}
    assert svc["spec"]["ports"][0] == {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"model": {"name": "x"}}, "spec.model.repository"),
        ({"model": {"name": "Bad name!", "repository": "/r"}}, "spec.model.name"),
        ({**SPEC, "adapters": [{"name": "a", "path": "/a", "sha256": DIGEST}] * 2}, "declared twice"),
        ({**SPEC, "gpuSharing": {"mode": "mig"}}, "migProfile"),
        ({**SPEC, "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 2}}, "spec.autoscaling"),
    ],
)
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        parse_spec(spec)
