"""README's "Run it in a cluster" walkthrough, run command by command against the real API server.

The commands are read from the README itself (the fenced block after the `walkthrough` marker), so the
document cannot drift from what works. They run in one bash in the repository root, as a user types them, with `kubectl`,
`helm` and `taskloom` on PATH and KUBECONFIG pointing at the test server. Lines ending in a
`# not run here: ...` comment are the ones a test cannot do: pushing to a remote registry, and
talking to a Kubeflow Pipelines API that this control plane does not have. Their count is asserted,
so a new untested command cannot slip in.
"""

from __future__ import annotations

import os
import re

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


def test_readme_walkthrough_runs_against_the_api_server(cluster, tmp_path):
    commands = walkthrough()
    skipped = [c for c in commands if NOT_RUN.search(c)]
    assert len(skipped) <= 4, skipped
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kubectl", "helm"):
        os.symlink(TOOLS / tool, bin_dir / tool)
    env = cluster.env(PATH=f"{bin_dir}:{REPO / '.venv' / 'bin'}:{os.environ['PATH']}", WORK=str(tmp_path))
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
