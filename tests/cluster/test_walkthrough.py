"""README's "Run it in a cluster" walkthrough, run command by command against the real API server.

The commands are read from the README itself (the fenced block after the `walkthrough` marker), so the
document cannot drift from what works. They run in one bash in the repository root, as a user types them, with `kubectl`,
`helm` and `taskloom` on PATH and KUBECONFIG pointing at the test server. Lines ending in a
`# not run here: ...` comment are the ones a test cannot do (pushing to a remote registry); their count
is asserted, so a new untested command cannot slip in.

Kubeflow Pipelines itself is a set of containers and cannot run here, so `KFP_HOST` points the
walkthrough's `taskloom pipeline register` and `submit` at a stand-in of the KFP v2beta1 REST API on
loopback (kfp_standin.py: it checks each request against the published kfp_server_api models): the
real commands send their real requests, and the test checks what arrived (the compiled drift_retrain
uploaded, a run of train_merge_deploy on the registry's image) and that the chart's Sensor got the ids.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml
from cluster_env import REPO, TOOLS
from kfp_standin import KfpStandIn

pytestmark = pytest.mark.cluster

MARKER = "<!-- walkthrough: every command below runs in tests/cluster/test_walkthrough.py -->"
NOT_RUN = re.compile(r"#\s*not run here:")


def walkthrough() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert MARKER in text, "README lost its tested walkthrough"
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands, pending = [], ""
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pending += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            commands.append(pending.strip())
            pending = ""
    return commands


def test_readme_walkthrough_runs_against_the_api_server(cluster, tmp_path):
    commands = walkthrough()
    skipped = [c for c in commands if NOT_RUN.search(c)]
    assert len(skipped) == 2, skipped  # the two pushes to a registry
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kubectl", "helm"):
        os.symlink(TOOLS / tool, bin_dir / tool)
    with KfpStandIn() as kfp:
        env = cluster.env(PATH=f"{bin_dir}:{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", KFP_HOST=kfp.url)
        # one shell, as a user types it: variables set by one line are seen by the next; -x names a failing line
        script = "\n".join(c for c in commands if not NOT_RUN.search(c))
        # `make images` is a no-op after `make test-cluster` built them, a rebuild (sources changed) takes minutes
        out = cluster.run("bash", "-euxo", "pipefail", "-c", script, env=env, check=False, timeout=2400)
    assert out.returncode == 0, f"a README command failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    # the walkthrough leaves a deployed release whose workloads were created and placed
    status = cluster.run(str(TOOLS / "helm"), "status", "taskloom", "-n", "taskloom", env=env).stdout
    assert "STATUS: deployed" in status
    pods = cluster.get("pods", "-n", "taskloom", "-l", "app.kubernetes.io/component=triton")["items"]
    assert pods and all(p["spec"]["containers"][0]["image"].startswith("registry.example.com/ml/") for p in pods)
    compiled = (REPO / "build" / "drift_retrain.yaml").read_text()
    assert "image: registry.example.com/ml/taskloom:" in compiled and "ghcr.io" not in compiled
    # what the KFP API received, every request valid: drift_retrain registered as compiled, a
    # train_merge_deploy run of its uploaded version on our image
    assert kfp.errors == []
    (drift,) = [p for p in kfp.pipelines.values() if p["display_name"] == "drift_retrain"]
    (drift_version,) = [v for v in kfp.versions.values() if v["pipeline_id"] == drift["pipeline_id"]]
    assert kfp.packages[drift_version["pipeline_version_id"]] == compiled.encode()
    (run,) = kfp.runs
    spec = next(yaml.safe_load_all(kfp.packages[run["pipeline_version_reference"]["pipeline_version_id"]]))
    assert spec["pipelineInfo"]["name"] == "train-merge-deploy"
    assert run["runtime_config"]["parameters"] == {"tasks": "rt-sentiment"}
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/ml/taskloom:0.1.0"}
    # the ids `register --output helm` printed went into the release: the Sensor starts that version
    values = json.loads(cluster.run(str(TOOLS / "helm"), "get", "values", "taskloom", "-n", "taskloom", "-o", "json",
                                    env=env).stdout)
    assert values["kfp"] == {"pipelineId": drift["pipeline_id"], "pipelineVersionId": drift_version["pipeline_version_id"],
                             "experimentId": run["experiment_id"], "modelDeployment": "rt"}
    # the README's ModelDeployment example, applied as written: the resource the operator serves from
    md = cluster.get("modeldeployment", "rt", "-n", "taskloom")
    assert md["spec"]["model"] == {"name": "taskloom", "repository": "/mnt/taskloom/model_repository"}
    assert md["spec"]["replicas"] == 2 and md["spec"]["gpusPerReplica"] == 0  # the schema's defaults filled in
    header = cluster.kubectl("get", "modeldeployments", "-n", "taskloom").stdout.splitlines()[0].split()
    assert header == ["NAME", "MODEL", "VERSION", "ADAPTERS", "READY", "REPLICAS", "AGE"]


def test_readme_model_deployment_example_is_the_applied_file():
    text = (REPO / "README.md").read_text()
    block = text.split("`manifests/examples/modeldeployment.yaml`", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    assert block == (REPO / "manifests" / "examples" / "modeldeployment.yaml").read_text()
