"""README's "Run it in a cluster" walkthrough, run command by command against the real API server.

The commands are read from the README itself (the fenced block after the `walkthrough` marker), so the
document cannot drift from what works. They run in one bash in the repository root, as a user types them, with `kubectl`,
`helm` and `taskloom` on PATH and KUBECONFIG pointing at the test server. Lines ending in a
`# not run here: ...` comment are the ones a test cannot do (pushing to a remote registry); their count
is asserted, so a new untested command cannot slip in.

Kubeflow Pipelines itself is a set of containers and cannot run here, so `KFP_HOST` points the
walkthrough's `kfp pipeline create` and `taskloom pipeline submit` at a recording stand-in of the KFP
v2beta1 REST API on loopback: the real clients send their real requests, and the test checks what
arrived (the compiled pipeline uploaded, a run of train_merge_deploy on the registry's image).
"""

from __future__ import annotations

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from cluster_env import REPO, TOOLS

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


class KfpStandIn(BaseHTTPRequestHandler):
    """Answers the KFP v2beta1 calls kfp.Client makes, and records them."""

    calls: ClassVar[list] = []
    NOW = "2026-01-01T00:00:00Z"

    def _reply(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.calls.append(("GET", self.path, b""))
        self._reply({"experiments": []} if "/experiments" in self.path else {})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.calls.append(("POST", self.path, body))
        if "/pipelines/upload" in self.path:
            self._reply({"pipeline_id": "p-1", "display_name": "drift_retrain", "created_at": self.NOW})
        elif self.path.endswith("/experiments"):
            self._reply({"experiment_id": "e-1", "display_name": "taskloom", "created_at": self.NOW})
        elif self.path.endswith("/runs"):
            self._reply({"run_id": "r-1", "experiment_id": "e-1", "state": "PENDING", "created_at": self.NOW})
        else:
            self._reply({})

    def log_message(self, *args):
        pass


def test_readme_walkthrough_runs_against_the_api_server(cluster, tmp_path):
    commands = walkthrough()
    skipped = [c for c in commands if NOT_RUN.search(c)]
    assert len(skipped) == 2, skipped  # the two pushes to a registry
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kubectl", "helm"):
        os.symlink(TOOLS / tool, bin_dir / tool)
    kfp = ThreadingHTTPServer(("127.0.0.1", 0), KfpStandIn)
    threading.Thread(target=kfp.serve_forever, daemon=True).start()
    env = cluster.env(PATH=f"{bin_dir}:{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
                      KFP_HOST=f"http://127.0.0.1:{kfp.server_address[1]}")
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
    kfp.shutdown()
    # what the KFP API received: the compiled drift_retrain uploaded, a train_merge_deploy run on our image
    upload = [b for m, p, b in KfpStandIn.calls if m == "POST" and "/pipelines/upload" in p]
    assert len(upload) == 1 and b"registry.example.com/ml/taskloom:" in upload[0] and b"drift-retrain" in upload[0]
    (run,) = [json.loads(b) for m, p, b in KfpStandIn.calls if m == "POST" and p.endswith("/runs")]
    spec = run["pipeline_spec"]["pipeline_spec"]  # the pipeline and its kfp-kubernetes platform spec
    assert spec["pipelineInfo"]["name"] == "train-merge-deploy"
    assert run["runtime_config"]["parameters"] == {"tasks": "rt-sentiment"}
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example.com/ml/taskloom:0.1.0"}
