"""The gate step after a merge: a promoted model is recorded in Feast, a failed gate names the task
and records nothing; in both pipelines the gate writes to the shared Feast repository and deploy runs
only under its `promoted` condition.

The "merged" model here is a copy of the MiniLM base scored for real on two small built-in tasks;
the training runs are metrics.json files whose base/tuned numbers are set around that real score so
that one case keeps every gain and the other loses most of one task's gain.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from taskloom.errors import UserError
from taskloom.specs import GateSpec
from taskloom.steps import gate_step, model_id

REPO = Path(__file__).resolve().parents[2]


def _small_task(root: Path, name: str, builtin: str, n_eval: int = 30) -> Path:
    from taskloom.tasks.catalog import build_task

    spec, train, eval_ = build_task(builtin)
    folder = root / name
    folder.mkdir(parents=True)
    for split, rows in (("train", train[:60]), ("eval", eval_[:n_eval])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {**spec, "name": name, "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def _run(root: Path, task: str, metric: str, base: float, tuned: float) -> str:
    root.mkdir(parents=True)
    (root / "metrics.json").write_text(json.dumps({"task": task, "type": "x", "metric": metric, "base": base, "tuned": tuned}))
    return str(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from taskloom.models.registry import resolve_base
    from taskloom.specs import load_task
    from taskloom.train.evaluate import evaluate_task

    root = tmp_path_factory.mktemp("gate")
    tasks = {"tiny-lee": _small_task(root, "tiny-lee", "lee-similarity"), "tiny-qa": _small_task(root, "tiny-qa", "chatterbot-qa")}
    model = root / "merged"
    shutil.copytree(resolve_base("minilm"), model)
    scores = {name: evaluate_task(load_task(d / "task.yaml"), model=model)["value"] for name, d in tasks.items()}
    assert 0.2 < scores["tiny-lee"] < 1.0 and 0.2 < scores["tiny-qa"] < 1.0  # real scores of the real encoder
    return root, tasks, model, scores


def test_model_id_is_a_content_address(setup, tmp_path):
    _, _, model, _ = setup
    mid = model_id(model)
    assert re.fullmatch(r"taskloom-[0-9a-f]{12}", mid)
    assert model_id(model, "encoder") == "encoder-" + mid.split("-", 1)[1]
    other = tmp_path / "other"
    other.mkdir()
    (other / "merge_report.json").write_text(json.dumps({"files": {"model.safetensors": "ab" * 32}}))
    assert model_id(other) != mid and model_id(other) == model_id(other)
    with pytest.raises(UserError, match="no merge_report.json and no"):
        model_id(tmp_path / "empty")


def test_promoted_model_is_recorded_in_feast_per_task(setup, tmp_path):
    from taskloom.store.feature_store import TaskStore

    _, tasks, model, scores = setup
    runs = [_run(tmp_path / "lee", "tiny-lee", "pearson", scores["tiny-lee"] - 0.2, scores["tiny-lee"]),
            _run(tmp_path / "qa", "tiny-qa", "mrr", scores["tiny-qa"] - 0.1, scores["tiny-qa"] + 0.005)]
    repo = tmp_path / "feature_repo"
    report = gate_step([str(d) for d in tasks.values()], runs, model, tmp_path / "gate", GateSpec(share=0.9, feature_repo=str(repo)))
    assert report["promote"] is True and report["failed"] == []
    assert report["tasks"]["tiny-lee"]["kept_share"] == pytest.approx(1.0, abs=1e-6)
    assert report["tasks"]["tiny-qa"]["kept_share"] == pytest.approx(0.1 / 0.105, abs=1e-6)
    mid = model_id(model)
    assert report["model_id"] == mid and report["message"].startswith(f"promoted {mid}")
    assert report["recorded"] == [f"{mid}/tiny-lee", f"{mid}/tiny-qa"]
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["recorded"] == report["recorded"]

    store = TaskStore(repo)
    lee = store.read_adapter(f"{mid}/tiny-lee")
    assert lee["task_id"] == "tiny-lee" and lee["metric"] == "pearson"
    assert lee["merged"] == pytest.approx(scores["tiny-lee"], abs=1e-6)
    assert lee["tuned"] == pytest.approx(scores["tiny-lee"]) and lee["base"] == pytest.approx(scores["tiny-lee"] - 0.2)
    qa = store.read_adapter(f"{mid}/tiny-qa")
    assert qa["metric"] == "mrr" and qa["merged"] == pytest.approx(scores["tiny-qa"], abs=1e-6)


def test_failed_gate_names_the_task_and_records_nothing(setup, tmp_path):
    _, tasks, model, scores = setup
    # tiny-lee's adapter gained 0.4 over the base; the merged model keeps only 0.1 of it (25 %)
    runs = [_run(tmp_path / "lee", "tiny-lee", "pearson", scores["tiny-lee"] - 0.1, scores["tiny-lee"] + 0.3),
            _run(tmp_path / "qa", "tiny-qa", "mrr", scores["tiny-qa"] - 0.1, scores["tiny-qa"])]
    repo = tmp_path / "feature_repo"
    report = gate_step([str(d) for d in tasks.values()], runs, model, tmp_path / "gate", GateSpec(share=0.9, feature_repo=str(repo)))
    assert report["promote"] is False and report["failed"] == ["tiny-lee"]
    assert report["tasks"]["tiny-lee"]["kept_share"] == pytest.approx(0.25, abs=1e-6)
    assert report["tasks"]["tiny-qa"]["ok"] is True
    assert report["message"].startswith(f"kept the previous model, {model_id(model)} not promoted: tiny-lee kept 25% of its gain")
    assert "tiny-qa" not in report["message"]
    assert report["recorded"] == [] and not repo.exists()  # nothing written to Feast
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["failed"] == ["tiny-lee"]


def test_gate_step_rejects_a_run_without_metrics_fields(setup, tmp_path):
    _, tasks, model, _ = setup
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"task": "tiny-lee", "base": 0.1, "tuned": 0.2}))
    with pytest.raises(UserError, match=r"metrics.json: missing field 'metric'"):
        gate_step([str(tasks["tiny-lee"])], [str(tmp_path / "run")], model, tmp_path / "gate")
    assert not (tmp_path / "gate").exists()


@pytest.mark.parametrize("name", ["train_merge_deploy", "drift_retrain"])
def test_pipelines_wire_the_gate_to_feast_and_deploy_only_when_promoted(name):
    docs = list(yaml.safe_load_all((REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text()))
    tasks = docs[0]["root"]["dag"]["tasks"]
    gate = tasks["gate-model"]["inputs"]["parameters"]
    assert gate["feature_repo"] == {"componentInputParameter": "feature_repo"}
    assert gate["model_name"] == {"componentInputParameter": "model_name"}
    mounts = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-gate-model"]["pvcMount"]
    assert [m["mountPath"] for m in mounts] == ["/mnt/taskloom"]  # the Feast repository lives there
    assert "deploy-model" not in tasks  # only inside the condition on the gate's output
    condition = next(t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-condition"))
    assert condition["triggerPolicy"]["condition"].endswith("pipelinechannel--gate-model-Output'] == true")
    assert "deploy-model" in docs[0]["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
