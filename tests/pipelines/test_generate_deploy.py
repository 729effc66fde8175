"""generate_deploy end to end with kfp.local: a generator trained on a tiny bank (taskloom's own train
path), then a new task. The gate is `tuned - base > min_gain` on the eval split, so both branches are
forced: an impossible margin falls back to training, a negative one ships the generated adapter; either
way the adapter served next is the one the branch made, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from metalora_bank import chat_task, tiny_bank

from taskloom.artifacts import sha256_file
from taskloom.kfp import run_local
from taskloom.metalora.generator import train_generator
from taskloom.serve.repository import build_repository, read_manifest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> Path:
    root = tiny_bank(tmp_path_factory.mktemp("bank"))
    train_generator(root, root / "generator", seed=0, candidates=((8, 32, "gelu", 1e-2),), steps=40, progress=False, sft=((0, 0.0), (3, 1e-3)))
    return root / "generator"


@pytest.mark.parametrize("min_gain, ships", [(1.5, False), (-1.5, True)])
def test_the_gate_picks_the_branch_and_that_adapter_is_served(generator, tmp_path, min_gain, ships):
    task = chat_task(tmp_path / "task", "money", "sports", n_train=24)
    root = tmp_path / "kfp"
    build_repository("minilm", root / "model_repository")  # a served base the adapter is added to
    result = run_local("generate_deploy", {"task": str(task), "generator": str(generator), "min_gain": str(min_gain),
                                           "max_steps": "2"}, root, quiet=True)
    assert result["state"] == "SUCCEEDED", result.get("error")
    run_dir = Path(result["run_dir"])
    generated = json.loads((run_dir / "generate-adapter" / "model" / "metrics.json").read_text())
    assert generated["task"] == "topic-money-sports" and generated["generation_ms"] > 0
    assert (generated["tuned"] - generated["base"] > min_gain) is ships
    assert result["outputs"]["Output"] is ships
    trained = list(run_dir.glob("**/train-adapter/model/adapter"))
    assert len(trained) == (0 if ships else 1)
    source = run_dir / "generate-adapter" / "model" / "adapter" if ships else trained[0]

    folder = root / "model_repository" / "taskloom"
    state = json.loads((folder / "versions.json").read_text())
    assert state["serving"] == 2 and state["versions"]["2"]["status"] == "serving"
    manifest = read_manifest(folder / "2")
    assert sorted(manifest["adapters"]) == ["topic-money-sports"]
    served = folder / "2" / "adapters" / "topic-money-sports" / "adapter_model.safetensors"
    assert sha256_file(served) == sha256_file(source / "adapter_model.safetensors")
    assert "versions: [ 2 ]" in (folder / "config.pbtxt").read_text()
