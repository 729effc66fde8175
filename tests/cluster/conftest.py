"""The cluster tier's session fixture: one real control plane for every `cluster` test (see cluster_env.py)."""

from __future__ import annotations

import subprocess

import pytest
from cluster_env import ARGO_CRDS, TESTENV, TOOLS, Cluster, make_nodes, shared_volumes, trainer_crd


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Cluster:
    for tool in ("helm", "kubectl"):
        assert (TOOLS / tool).exists(), f"{TOOLS / tool} missing: run `make tools`"
    state = tmp_path_factory.mktemp("k8s")
    up = subprocess.run(["bash", str(TESTENV), "up", str(state)], capture_output=True, text=True, timeout=1800)
    assert up.returncode == 0, f"k8s-testenv up failed:\n{up.stdout}\n{up.stderr}"
    c = Cluster(dir=state, kubeconfig=state / "kubeconfig")
    try:
        c.kubectl("apply", *[arg for p in ARGO_CRDS for arg in ("-f", str(p))])
        c.apply([trainer_crd("trainjobs", "TrainJob", "Namespaced", "trainer.kubeflow.org_trainjobs.schema.yaml"),
                 trainer_crd("trainingruntimes", "TrainingRuntime", "Namespaced",
                             "trainer.kubeflow.org_clustertrainingruntimes.schema.yaml")])
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        make_nodes(c)
        shared_volumes(c)
        yield c
    finally:
        subprocess.run(["bash", str(TESTENV), "down", str(state)], capture_output=True, timeout=60)
