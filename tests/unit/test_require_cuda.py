"""A step that asked for an nvidia.com/gpu (pipelines.placement.on_gpu sets TASKLOOM_REQUIRE_CUDA=1) and
finds no CUDA stops with one line and exit 2 instead of training on the CPU. Only in a Kubernetes pod
(KUBERNETES_SERVICE_HOST set): kfp.local passes the task's env to its subprocess but grants no GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def task(rt_small) -> Path:
    return rt_small  # the shared 24/12-row rt-sentiment task (tests/conftest.py)


def run_train(task: Path, out: Path, require: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TASKLOOM_REQUIRE_CUDA"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU for this process, whatever the machine has
    env["KUBERNETES_SERVICE_HOST"] = "10.96.0.1"  # as Kubernetes sets it in every container
    if require is not None:
        env["TASKLOOM_REQUIRE_CUDA"] = require
    cmd = [sys.executable, "-m", "taskloom", "train", str(task), "--out", str(out), "--max-steps", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def test_gpu_step_without_cuda_exits_2_with_one_line(task, tmp_path):
    out = tmp_path / "run"
    r = run_train(task, out, "1")
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert "Traceback" not in r.stderr
    assert err.startswith("error: TASKLOOM_REQUIRE_CUDA=1: ") and "\n" not in err, err
    assert "no CUDA device" in err
    assert not out.exists()  # nothing trained, nothing written


def test_kfp_train_component_exits_2_with_one_line(task, tmp_path):
    """The KFP train component, as its container runs it (the component's function in a fresh Python, no
    CLI around it), stops before reading the task: one line and exit 2, not the KFP executor's traceback."""
    code = (  # artifacts are objects with .path, as KFP's executor hands them
        "import sys; from types import SimpleNamespace as A; from taskloom_components.train import train_adapter; "
        "train_adapter.python_func(dataset=A(path=sys.argv[1]), max_steps=1, epochs=1, rank=4, base='', "
        "device='auto', seed=0, feature_repo='', adapter_id='a', model=A(path=sys.argv[2], metadata={}), metrics=None, page=None, classification=None)"
    )
    env = {**os.environ}
    env.update(CUDA_VISIBLE_DEVICES="", KUBERNETES_SERVICE_HOST="10.96.0.1", TASKLOOM_REQUIRE_CUDA="1")
    r = subprocess.run([sys.executable, "-c", code, str(task.parent), str(tmp_path / "model")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error: TASKLOOM_REQUIRE_CUDA=1: this step asked for an nvidia.com/gpu")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize(("value", "in_pod"), [("0", True), ("", True), ("1", False)])
def test_not_required_when_unset_zero_or_outside_a_pod(monkeypatch, value, in_pod):
    """Off, or a kfp.local run (the task's env var arrives, the GPU request is ignored): train on the CPU."""
    from taskloom.train.device import resolve_device

    monkeypatch.setenv("TASKLOOM_REQUIRE_CUDA", value)
    if in_pod:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    else:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
