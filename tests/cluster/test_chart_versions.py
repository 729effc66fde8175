"""The chart on current Kubernetes: every object of each chart-testing values file (Triton autoscaled
too) renders with the GA APIs (policy/v1, autoscaling/v2) and validates strictly against the 1.27 and
1.35 schemas. The cluster tier installs the same values on a v1.20 server, where the same templates
choose the beta APIs that server has (tests/cluster/test_chart_install.py)."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from test_kfp_chart import CHART, helm

VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CUSTOM_GROUPS = {"argoproj.io", "trainer.kubeflow.org", "taskloom.dev"}


@pytest.mark.parametrize("kube", ["1.27", "1.35"])
@pytest.mark.parametrize("values", VALUES, ids=[v.stem for v in VALUES])
def test_ci_values_render_ga_apis_that_validate(values, kube):
    out = helm("template", "taskloom", str(CHART), "-f", str(values), "--kube-version", f"{kube}.0",
               "--set", "triton.autoscaling.enabled=true", "--set", "triton.autoscaling.minReplicas=2")
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = {d["kind"]: d["apiVersion"] for d in docs}
    assert kinds["PodDisruptionBudget"] == "policy/v1"
    assert kinds["HorizontalPodAutoscaler"] == "autoscaling/v2"
    (triton,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-triton")]
    assert "replicas" not in triton["spec"], "an autoscaled Deployment leaves replicas to the HPA"
    for obj in docs:
        if obj["apiVersion"].split("/")[0] in CUSTOM_GROUPS:
            continue  # custom resources: checked against their own schemas (test_kfp_chart, test_trainjob)
        kubernetes_validate.validate(obj, kube, strict=True)


def test_chart_states_the_versions_it_supports():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == ">=1.20.0-0"
    assert "Supported Kubernetes versions" in (CHART / "README.md").read_text()
