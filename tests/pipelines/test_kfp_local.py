"""Pipelines run end to end with kfp.local (SubprocessRunner, this environment, no venv per step).

The default tier runs each pipeline on tiny tasks (40 training rows, 2 seeded optimizer steps):
drift_retrain, train_merge_deploy (the gate's decision asserted), train_joint, and a run whose data
fails validation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import yaml

from taskloom import cli
from taskloom.kfp import root_logger_kept, run_local

pytestmark = pytest.mark.e2e  # tier: runs whole pipelines with kfp.local


def tiny_task(folder: Path, bad_label_row: int | None = None) -> Path:
    """A 40/20-row classification task from the built-in Rotten Tomatoes rows."""
    from taskloom.tasks.catalog import build_task

    spec, train, eval_ = build_task("rt-sentiment")
    pick = lambda rows, n: [r for r in rows if r["label"] == "fresh"][: n // 2] + [r for r in rows if r["label"] == "rotten"][: n // 2]  # noqa: E731
    train, eval_ = pick(train, 40), pick(eval_, 20)
    if bad_label_row is not None:
        eval_[bad_label_row] = {**eval_[bad_label_row], "label": "meh"}
    folder.mkdir(parents=True)
    for name, rows in (("train", train), ("eval", eval_)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {**spec, "name": "tiny-sentiment", "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder / "task.yaml"


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _outputs(step_dir: Path) -> dict:
    """{output name: (path, metadata)} of one kfp.local step, from the executor output it wrote."""
    doc = json.loads((step_dir / "executor_output.json").read_text())
    return {k: (Path(v["artifacts"][0]["uri"]), v["artifacts"][0].get("metadata", {})) for k, v in doc["artifacts"].items()}


def _page(path: Path) -> str:
    """The text of an HTML artifact (a whole page, as the KFP UI shows it)."""
    text = path.read_text()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>"), path
    return text


def test_interleaved_kfp_tasks_leave_the_root_logger_as_it_was():
    """Two parallel kfp.local tasks, entering and leaving kfp's own logger context out of order."""
    from kfp.local.logging_utils import local_logger_context

    root = logging.getLogger()
    before = root.level, root.handlers[:]
    with root_logger_kept():
        first, second = local_logger_context(), local_logger_context()
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
        assert root.level == logging.INFO  # what kfp alone leaves behind
    assert (root.level, root.handlers) == before


def test_drift_retrain_runs_locally_and_deploys(tmp_path):
    from taskloom.store.feature_store import TaskStore

    task_file = tiny_task(tmp_path / "task")
    before = _digests(tmp_path / "task")
    root = tmp_path / "kfp"
    logger_before = logging.getLogger().level, logging.getLogger().handlers[:]
    result = run_local(
        "drift_retrain",
        {"task": str(task_file), "adapter_id": "tiny-v2", "max_steps": "2", "seed": "1"},
        root,
        quiet=True,
    )
    assert result["state"] == "SUCCEEDED", result.get("error")
    run_dir = Path(result["run_dir"])
    assert result["run_id"] == run_dir.name and run_dir.name.startswith("drift-retrain-")
    assert "finished with status" in (run_dir / "run.log").read_text()
    assert result["parameters"]["max_steps"] == 2  # the string from the command line, converted
    assert (logging.getLogger().level, logging.getLogger().handlers) == logger_before

    gate = json.loads((Path(result["outputs"]["gate"]["path"]) / "gate.json").read_text())
    row = gate["tasks"]["tiny-sentiment"]
    train_metrics = json.loads(next(run_dir.glob("for-loop-*/train-adapter/model/metrics.json")).read_text())
    assert train_metrics["task"] == "tiny-sentiment" and train_metrics["metric"] == "accuracy"
    assert row["base"] == pytest.approx(train_metrics["base"]) and row["single"] == pytest.approx(train_metrics["tuned"])
    # the adapter folded into the base (linear, weight 1) scores what the adapter scored
    assert row["merged"] == pytest.approx(train_metrics["tuned"], abs=0.051)  # one of 20 eval rows
    assert result["outputs"]["promoted"] is gate["promote"]

    store = TaskStore(root / "feature_repo")
    assert store.read_task("tiny-sentiment")["rows"] == 40
    assert store.read_adapter("tiny-v2")["tuned"] == pytest.approx(train_metrics["tuned"])
    assert store.read_reference("tiny-sentiment", adapter_id="tiny-v2").shape[1] == 384

    if gate["promote"]:
        config = (root / "model_repository" / "taskloom" / "config.pbtxt").read_text()
        assert "LABEL" in config and "PROBS" in config  # the task's only head is served
    assert _digests(tmp_path / "task") == before  # the user's files are read, never written


def test_invalid_data_stops_the_run_before_training(tmp_path, capsys):
    task_file = tiny_task(tmp_path / "task", bad_label_row=5)
    root = tmp_path / "kfp"
    code = cli.main(["pipeline", "run", "train_merge_deploy", "-p", f"tasks={task_file}", "-p", "max_steps=2",
                     "--root", str(root), "--quiet"])
    assert code == 2
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["state"] == "FAILED" and "validate-task" in result["error"]
    assert err.startswith("error: pipeline train_merge_deploy: run train-merge-deploy-") and err.count("\n") == 1
    run_dir = Path(result["run_dir"])
    report = json.loads(next(run_dir.glob("for-loop-*/validate-task/report/validation.json")).read_text())
    assert report["success"] is False and "bad_rows" in report["failed"]  # 1 of 20 eval rows: above the 1 % allowed
    assert not list(run_dir.glob("for-loop-*/train-adapter"))  # training never started
    assert not (root / "model_repository").exists()


def test_train_merge_deploy_runs_locally_and_deploys_only_what_the_gate_promotes(tmp_path):
    """The release pipeline end to end on two tiny tasks (2 seeded steps each): the gate's decision is
    the rule applied to the scores it reports, and deploy ran exactly when it promoted."""
    from taskloom.merge.gate import gate
    from taskloom.store.feature_store import TaskStore

    first = tiny_task(tmp_path / "a")
    second = tiny_task(tmp_path / "b")
    doc = yaml.safe_load(second.read_text())
    second.write_text(yaml.safe_dump({**doc, "name": "tiny-sentiment-b"}, sort_keys=False))
    root = tmp_path / "kfp"
    result = run_local("train_merge_deploy", {"tasks": f"{first},{second}", "max_steps": "2", "seed": "1"},
                      root, quiet=True)
    assert result["state"] == "SUCCEEDED", result.get("error")
    run_dir = Path(result["run_dir"])
    gate_report = json.loads((Path(result["outputs"]["gate"]["path"]) / "gate.json").read_text())
    assert set(gate_report["tasks"]) == {"tiny-sentiment", "tiny-sentiment-b"}
    report = json.loads((Path(result["outputs"]["merged"]["path"]) / "merge_report.json").read_text())
    assert report["method"] == "task_arithmetic"
    # the decision: every task kept 90 % of its gain, recomputed from the training runs' own metrics
    runs = [json.loads(f.read_text()) for f in run_dir.glob("for-loop-*/train-adapter/model/metrics.json")]
    base = {m["task"]: m["base"] for m in runs}
    single = {m["task"]: m["tuned"] for m in runs}
    merged = {t: row["merged"] for t, row in gate_report["tasks"].items()}
    expected = gate(base, single, merged, share=0.9)
    assert gate_report["promote"] is expected["promote"] and gate_report["failed"] == expected["failed"]
    assert result["outputs"]["promoted"] is gate_report["promote"]

    # what the KFP UI shows: an HTML page per validation, training run and merge, and each training
    # run's confusion matrix on its eval split (the diagonal's share is the tuned accuracy)
    validated = {_page(_outputs(d)["page"][0]).split("validation of ")[1].split(":")[0]
                 for d in run_dir.glob("for-loop-*/validate-task")}
    assert validated == {"tiny-sentiment", "tiny-sentiment-b"}
    for step in run_dir.glob("for-loop-*/train-adapter"):
        outputs = _outputs(step)
        m = json.loads((outputs["model"][0] / "metrics.json").read_text())
        page = _page(outputs["page"][0])
        assert f"Training run: {m['task']}" in page and f"{m['tuned']:.4f}" in page and "data:image/png" in page
        matrix = outputs["classification"][1]["confusionMatrix"]
        assert [c["displayName"] for c in matrix["annotationSpecs"]] == ["fresh", "rotten"]
        counts = [r["row"] for r in matrix["rows"]]
        assert sum(map(sum, counts)) == m["eval_rows"] == 20
        assert (counts[0][0] + counts[1][1]) / 20 == pytest.approx(m["tuned"], abs=0.051)  # one of 20 rows
    merge_page = _page(_outputs(run_dir / "merge-adapters")["page"][0])
    assert "Merge: task_arithmetic" in merge_page
    assert "tiny-sentiment" in merge_page and "tiny-sentiment-b" in merge_page
    assert f"{report['delta_norm']:.4f}" in merge_page

    store = TaskStore(root / "feature_repo")
    for task in ("tiny-sentiment", "tiny-sentiment-b"):
        assert store.read_task(task)["task_id"] == task
    deployed = list(run_dir.glob("**/deploy-model"))
    if gate_report["promote"]:
        assert deployed and (root / "model_repository" / "taskloom" / "config.pbtxt").exists()
        assert store.read_adapter(f"{gate_report['model_id']}/tiny-sentiment")["merged"] == pytest.approx(
            merged["tiny-sentiment"])
    else:  # held back: nothing deployed, nothing recorded under the model's id
        assert not deployed and not (root / "model_repository").exists()
        assert gate_report["recorded"] == []


def test_train_joint_trains_one_adapter_on_two_tasks(tmp_path):
    """The multi-task training component: one adapter, a head per task, each task's metrics in Feast."""
    from taskloom.store.feature_store import TaskStore

    first = tiny_task(tmp_path / "a")
    second = tiny_task(tmp_path / "b")
    doc = yaml.safe_load(second.read_text())
    second.write_text(yaml.safe_dump({**doc, "name": "tiny-sentiment-b"}, sort_keys=False))
    root = tmp_path / "kfp"
    result = run_local("train_joint", {"tasks": f"{first},{second}", "max_steps": "2", "adapter_id": "joint-v1",
                                       "mixing": "mixed"}, root, quiet=True)
    assert result["state"] == "SUCCEEDED", result.get("error")
    out = Path(result["outputs"]["adapter"]["path"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["type"] == "multitask" and metrics["mixing"] == "mixed" and metrics["steps"] == 2
    assert set(metrics["tasks"]) == {"tiny-sentiment", "tiny-sentiment-b"}
    page = _page(_outputs(Path(result["run_dir"]) / "train-joint-adapter")["page"][0])
    assert all(f"<td>{task}</td>" in page for task in metrics["tasks"])  # a row per task: base vs tuned
    for task in metrics["tasks"]:
        assert (out / "adapter" / "heads" / task).is_dir()
        stored = TaskStore(root / "feature_repo").read_adapter(f"joint-v1/{task}")
        assert stored["task_id"] == task and stored["tuned"] == pytest.approx(metrics["tasks"][task]["tuned"])
