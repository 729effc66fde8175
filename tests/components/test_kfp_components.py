"""KFP components called as plain functions (`component.python_func`), on real built-in data.

Each component maps artifact paths to one call of `taskloom.steps`; these tests check the mapping and
the step behind it: what lands in the artifact folders, what is logged as Metrics, and the one-line
errors for bad input (inputs never modified).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model

from taskloom.errors import UserError
from taskloom.specs import MergeStepSpec
from taskloom.steps import merge_step, parse_task_list, stage_task
from taskloom_components import IMAGE
from taskloom_components.deploy import deploy_model
from taskloom_components.drift_check import drift_check
from taskloom_components.export import export_task
from taskloom_components.task_list import task_list
from taskloom_components.train import train_adapter
from taskloom_components.validate import validate_task

ALL_COMPONENTS = [
    "taskloom_components.task_list:task_list", "taskloom_components.export:export_task", "taskloom_components.validate:validate_task",
    "taskloom_components.profile:profile_task", "taskloom_components.train:train_adapter", "taskloom_components.merge:merge_adapters",
    "taskloom_components.gate:gate_model", "taskloom_components.deploy:deploy_model", "taskloom_components.drift_check:drift_check",
]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tiny_task(folder: Path, bad_label_row: int | None = None) -> Path:
    """A 40/20-row classification task.yaml from the built-in Rotten Tomatoes rows, data in a subfolder."""
    from taskloom.tasks.catalog import build_task

    spec, train, eval_ = build_task("rt-sentiment")
    pick = lambda rows, n: [r for r in rows if r["label"] == "fresh"][: n // 2] + [r for r in rows if r["label"] == "rotten"][: n // 2]  # noqa: E731
    train, eval_ = pick(train, 40), pick(eval_, 20)
    if bad_label_row is not None:
        eval_[bad_label_row] = {**eval_[bad_label_row], "label": "meh"}
    (folder / "data").mkdir(parents=True)
    for name, rows in (("train", train), ("eval", eval_)):
        (folder / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {**spec, "name": "tiny-sentiment", "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "task.yaml"


@pytest.mark.parametrize("ref", ALL_COMPONENTS)
def test_every_component_runs_in_the_one_image_without_installing_anything(ref):
    import importlib

    module, attr = ref.split(":")
    comp = getattr(importlib.import_module(module), attr)
    container = comp.component_spec.implementation.container
    assert container.image == IMAGE
    script = " ".join(container.command or [])
    assert "pip install" not in script  # install_kfp_package=False, packages_to_install=[]
    assert "from taskloom.steps import" in script  # the body calls the library, nothing else


def test_task_list_splits_and_checks_the_comma_list():
    assert task_list.python_func(tasks=" rt-sentiment, chatterbot-qa ,") == ["rt-sentiment", "chatterbot-qa"]
    with pytest.raises(UserError, match="at least one task"):
        parse_task_list(" , ")
    with pytest.raises(UserError, match="more than once: rt-sentiment"):
        parse_task_list("rt-sentiment,chatterbot-qa,rt-sentiment")


def test_export_builtin_then_validate(tmp_path):
    dataset = Dataset(uri=str(tmp_path / "dataset"))
    export_task.python_func(task="chatterbot-qa", dataset=dataset)
    assert dataset.metadata["task"] == "chatterbot-qa" and dataset.metadata["type"] == "retrieval"
    staged = yaml.safe_load((tmp_path / "dataset" / "task.yaml").read_text())
    assert staged["name"] == "chatterbot-qa"
    n_train = sum(1 for _ in open(tmp_path / "dataset" / staged["data"]["train"]))
    n_eval = sum(1 for _ in open(tmp_path / "dataset" / staged["data"]["eval"]))
    assert n_train >= 100 and n_eval >= 20

    report, metrics = Artifact(uri=str(tmp_path / "report")), Metrics(uri=str(tmp_path / "metrics"))
    page = HTML(uri=str(tmp_path / "page"))
    validate_task.python_func(dataset=dataset, report=report, metrics=metrics, page=page)
    doc = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert doc["success"] is True and doc["task"] == "chatterbot-qa"
    assert metrics.metadata["errors"] == 0
    assert metrics.metadata["checks"] == len(doc["checks"]) >= 5
    assert "validation of chatterbot-qa" in (tmp_path / "report" / "validation.txt").read_text()
    # the page the KFP UI shows: the report as HTML, one row per check
    html = Path(page.path).read_text()
    assert html.startswith("<!doctype html>") and "validation of chatterbot-qa: PASSED" in html
    assert html.count("<tr class=") == len(doc["checks"])
    assert html == (tmp_path / "report" / "validation.html").read_text()


def test_export_of_a_task_path_copies_the_data_and_leaves_it_untouched(tmp_path):
    task_file = tiny_task(tmp_path / "mine")
    before = {p: _digest(p) for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    out = tmp_path / "staged"
    info = stage_task(str(task_file), out)
    assert info == {"task": "tiny-sentiment", "type": "classification", "task_file": str(out / "task.yaml")}
    staged = yaml.safe_load((out / "task.yaml").read_text())
    assert staged["data"] == {"train": "train.jsonl", "eval": "eval.jsonl"}
    assert staged["labels"] == ["fresh", "rotten"]
    assert _digest(out / "train.jsonl") == before[tmp_path / "mine" / "data" / "train.jsonl"]
    assert _digest(out / "eval.jsonl") == before[tmp_path / "mine" / "data" / "eval.jsonl"]
    after = {p: _digest(p) for p in (tmp_path / "mine").rglob("*") if p.is_file()}
    assert after == before  # nothing added, nothing changed beside the user's files


def test_export_rejects_a_name_that_is_neither_builtin_nor_a_file(tmp_path):
    with pytest.raises(UserError) as e:
        stage_task("rt-sentimnet", tmp_path / "out")
    assert "'rt-sentimnet'" in str(e.value) and "rt-sentiment" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_validation_failure_writes_the_report_then_stops(tmp_path):
    task_file = tiny_task(tmp_path / "bad", bad_label_row=3)
    dataset = Dataset(uri=str(tmp_path / "dataset"))
    export_task.python_func(task=str(task_file), dataset=dataset)
    report, metrics = Artifact(uri=str(tmp_path / "report")), Metrics(uri=str(tmp_path / "metrics"))
    page = HTML(uri=str(tmp_path / "page"))
    with pytest.raises(UserError, match=r"tiny-sentiment: data failed validation \(eval/bad_rows"):
        validate_task.python_func(dataset=dataset, report=report, metrics=metrics, page=page)
    doc = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert doc["success"] is False and "bad_rows" in doc["failed"]
    # the report's page is written before the failure; the step's HTML output is not (the step failed)
    assert "validation of tiny-sentiment: FAILED" in (tmp_path / "report" / "validation.html").read_text()
    assert not Path(page.path).exists()


def test_merge_step_rejects_bad_input_before_merging(tmp_path):
    with pytest.raises(UserError, match="not a trained adapter"):
        merge_step([str(tmp_path / "nothing")], tmp_path / "merged")
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "minilm"}))
    with pytest.raises(UserError, match="merge parameters: not JSON"):
        merge_step([str(tmp_path / "run")], tmp_path / "merged", MergeStepSpec(parameters="lambda=1"))
    with pytest.raises(UserError, match="expected a JSON object"):
        merge_step([str(tmp_path / "run")], tmp_path / "merged", MergeStepSpec(parameters="[1, 2]"))
    assert not (tmp_path / "merged").exists()


def test_drift_check_flags_a_shifted_window_only(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ref.npy", rng.normal(size=(120, 16)).astype(np.float32))
    np.save(tmp_path / "same.npy", rng.normal(size=(120, 16)).astype(np.float32))
    np.save(tmp_path / "shifted.npy", (rng.normal(size=(120, 16)) + 0.5).astype(np.float32))
    verdicts = {}
    for name in ("same", "shifted"):
        result, metrics = Artifact(uri=str(tmp_path / f"r-{name}")), Metrics(uri=str(tmp_path / f"m-{name}"))
        page = HTML(uri=str(tmp_path / f"p-{name}"))
        verdicts[name] = drift_check.python_func(
            reference=str(tmp_path / "ref.npy"), current=str(tmp_path / f"{name}.npy"),
            field="text", method="mmd", alpha=0.05, result=result, metrics=metrics, page=page,
        )
        saved = json.loads((tmp_path / f"r-{name}" / "drift.json").read_text())
        assert saved["p_value"] == metrics.metadata["p_value"]
        html = Path(page.path).read_text()
        assert html.startswith("<!doctype html>") and f"p = {saved['p_value']:.4g}" in html
        assert ("Drift check: <span class=\"bad\">drift</span>" in html) is (name == "shifted")
        assert str(tmp_path / f"{name}.npy") in html and "n_reference" in html
        assert metrics.metadata["n_reference"] == metrics.metadata["n_current"] == 120
        if name == "shifted":  # no permutation beats the observed statistic: p = (1 + 0) / (1 + 200)
            assert metrics.metadata["p_value"] == pytest.approx(1 / 201)
        else:
            assert metrics.metadata["p_value"] > 0.05
    assert verdicts == {"same": False, "shifted": True}


def test_deploy_builds_and_swaps_the_published_model_whole(tmp_path):
    served = tmp_path / "served"
    names = []
    for i in range(2):
        repo = Model(uri=str(tmp_path / f"repo{i}"))
        names.append(deploy_model.python_func(
            merged=Model(uri="minilm"), model_name="encoder", head_task="", model_repository=str(served), repository=repo,
        ))
        assert repo.metadata == {"model": "encoder", "head_task": ""}
        assert (tmp_path / f"repo{i}" / "encoder" / "config.pbtxt").exists()
    assert names == ["encoder", "encoder"]
    assert sorted(p.name for p in served.iterdir()) == ["encoder"]  # replaced whole: no staging or old copies left
    config = (served / "encoder" / "config.pbtxt").read_text()
    assert 'name: "encoder"' in config and "EMBEDDING" in config and "LABEL" not in config
    assert (served / "encoder" / "1" / "weights" / "model.safetensors").stat().st_size > 80_000_000


def test_deploy_to_an_unreachable_server_publishes_nothing(tmp_path):
    from taskloom.errors import UserError
    from taskloom.serve.launcher import free_port

    served = tmp_path / "served"
    with pytest.raises(UserError):
        deploy_model.python_func(
            merged=Model(uri="minilm"), model_name="encoder", head_task="", model_repository=str(served),
            repository=Model(uri=str(tmp_path / "repo")), server_url=f"http://127.0.0.1:{free_port()}",
        )
    assert not (served / "encoder").exists() or not any((served / "encoder").iterdir())


@pytest.mark.slow
def test_deploy_hot_loads_versions_into_a_running_triton(tmp_path):
    from taskloom.serve.client import TritonClient
    from taskloom.serve.launcher import TritonServer

    served = tmp_path / "served"
    served.mkdir()
    with TritonServer(served, model_control="explicit", models=["*"], log_dir=tmp_path / "logs") as server:
        for i in (1, 2):
            repo = Model(uri=str(tmp_path / f"repo{i}"))
            deploy_model.python_func(
                merged=Model(uri="minilm"), model_name="taskloom", head_task="", model_repository=str(served),
                repository=repo, server_url=server.http_url,
            )
            assert repo.metadata["version"] == i
            assert json.loads((tmp_path / f"repo{i}" / "deploy.json").read_text())["status"] == "serving"
        with TritonClient(server.http_url) as c:
            ready = [m for m in c.repository_index() if m["name"] == "taskloom" and m.get("state") == "READY"]
            emb = c.infer(["a fine film"])["embedding"]
    assert [int(m["version"]) for m in ready] == [2]
    assert emb.shape == (1, 384) and abs(float((emb ** 2).sum()) - 1) < 1e-3


def test_classification_scores_carry_the_eval_confusion_matrix(tmp_path):
    """What the training step logs as ClassificationMetrics: counts of (gold, predicted) over the eval
    rows, labels in the task's order, its diagonal the accuracy the metric reports."""
    from taskloom.specs import load_task
    from taskloom.train.evaluate import evaluate_task

    task = load_task(tiny_task(tmp_path / "task"))
    result = evaluate_task(task, device="cpu")  # the base encoder with its fitted probe head
    confusion = result["confusion"]
    assert confusion["labels"] == ["fresh", "rotten"]
    counts = np.array(confusion["matrix"])
    assert counts.shape == (2, 2) and counts.sum(axis=1).tolist() == [10, 10]  # each gold label's eval rows
    assert np.trace(counts) / counts.sum() == pytest.approx(result["value"])


@pytest.mark.e2e  # trains (one step) and scores a real adapter
def test_training_a_non_classification_task_gives_its_page_and_a_note_instead_of_a_matrix(tmp_path):
    from taskloom.tasks.catalog import build_task

    spec, train, eval_ = build_task("lee-similarity")
    folder = tmp_path / "task"
    folder.mkdir()
    for split, rows in (("train", train[:24]), ("eval", eval_[:12])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {**spec, "name": "tiny-lee", "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    page, classification = HTML(uri=str(tmp_path / "page")), ClassificationMetrics(uri=str(tmp_path / "cm"))
    train_adapter.python_func(
        dataset=Dataset(uri=str(folder)), model=Model(uri=str(tmp_path / "model")),
        metrics=Metrics(uri=str(tmp_path / "metrics")), page=page, classification=classification,
        max_steps=1, device="cpu", seed=1,
    )
    tuned = json.loads((tmp_path / "model" / "metrics.json").read_text())["tuned"]
    html = Path(page.path).read_text()
    assert "Training run: tiny-lee" in html and f"{tuned:.4f}" in html
    assert classification.metadata == {"note": "a pair_similarity task: no confusion matrix (classification only)"}
