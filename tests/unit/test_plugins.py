"""Extension points end to end: a plugin distribution (one file per plugin, a dist-info with its entry
points) is put on PYTHONPATH and its merge method, drift detector and task type run through the CLI;
a broken plugin is one `error:` line naming it, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from merge_helpers import base_state, dense_merge, make_adapter, write_merge_yaml
from safetensors.numpy import load_file

from taskloom.data.rows import write_rows
from taskloom.merge.methods import METHODS, Method
from taskloom.monitor.detectors import DETECTORS
from taskloom.plugins import Registry
from taskloom.tasks.catalog import build_task
from taskloom.tasks.types import TASK_TYPES, TaskType

pytestmark = pytest.mark.e2e  # tier: installs a plugin distribution and trains through the CLI in subprocesses

BIN = Path(sys.executable).parent / "taskloom"

HALFWAY = '''
"""A merge method from a plugin: half the weighted sum of the task vectors."""
import torch

from taskloom.merge.methods import Method


class Halfway(Method):
    name = "halfway"

    def merge(self, deltas, weights, p, ctx):
        acc = torch.zeros(ctx.shape)
        for w, d in zip(weights, deltas):
            if not d.zero:
                acc += w * d.get()
        return acc * 0.5
'''

MEAN_SHIFT = '''
"""A drift detector from a plugin: distance between the sample means, permutation p-value."""
import numpy as np

from taskloom.monitor.detectors import Detector


def mean_shift(reference, current, permutations, seed):
    pooled, n = np.concatenate([reference, current]), len(reference)
    stat = float(np.linalg.norm(reference.mean(0) - current.mean(0)))
    rng, hits = np.random.default_rng(seed), 0
    for _ in range(permutations):
        perm = rng.permutation(len(pooled))
        hits += np.linalg.norm(pooled[perm[:n]].mean(0) - pooled[perm[n:]].mean(0)) >= stat
    return {"statistic": stat, "p_value": (hits + 1) / (permutations + 1), "effect": stat}


MEAN_SHIFT = Detector("mean_shift", "distance between the sample means, permutation p-value", mean_shift, "mean distance", 0.1)
helper = 42  # not a detector: the broken plugin points here
'''

QUERY_MATCH = '''
"""A task type from a plugin: match each query to its answer among the eval answers."""
import numpy as np
import torch

from taskloom.errors import UserError
from taskloom.tasks.types import TaskType
from taskloom.train.objectives import info_nce_loss


class QueryMatch(TaskType):
    name = "query_match"
    fields = {"query": "str", "answer": "str"}
    main_text, text_fields, identity_fields = "query", ("query", "answer"), ("query",)
    metric = "top1"
    objective = "InfoNCE of each query against the batch's answers"

    def check_row(self, where, row, labels):
        if row["answer"] == row["query"]:
            raise UserError(f"{where}: field 'answer': the same text as the query")

    def loss(self, encode, rows, task, head=None):
        answers = list(dict.fromkeys(r["answer"] for r in rows))
        q, a = encode([r["query"] for r in rows]), encode(answers)
        return info_nce_loss(q, a, torch.tensor([answers.index(r["answer"]) for r in rows], device=q.device))

    def score(self, embed, rows, task, head=None):
        answers = list(dict.fromkeys(r["answer"] for r in rows))
        sims = embed([r["query"] for r in rows]) @ embed(answers).T
        gold = np.array([answers.index(r["answer"]) for r in rows])
        return {"value": float((sims.argmax(1) == gold).mean())}
'''


def _distribution(root: Path, name: str, files: dict[str, str], entry_points: str) -> Path:
    """A plugin distribution as pip would install it: its modules and a dist-info with its entry points."""
    root.mkdir(parents=True)
    for fname, text in files.items():
        (root / fname).write_text(textwrap.dedent(text).lstrip())
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points).lstrip())
    return root


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    return _distribution(
        tmp_path_factory.mktemp("site") / "good", "taskloom-demo-plugins",
        {"halfway_merge.py": HALFWAY, "mean_shift.py": MEAN_SHIFT, "query_match.py": QUERY_MATCH},
        """
        [taskloom.merge_methods]
        halfway = halfway_merge:Halfway

        [taskloom.detectors]
        mean_shift = mean_shift:MEAN_SHIFT

        [taskloom.task_types]
        query_match = query_match:QueryMatch
        """,
    )


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    return _distribution(
        tmp_path_factory.mktemp("site") / "broken", "taskloom-broken-plugins",
        {"mean_shift.py": MEAN_SHIFT},
        """
        [taskloom.merge_methods]
        missing = no_such_module:Thing

        [taskloom.detectors]
        not_a_detector = mean_shift:helper
        """,
    )


def taskloom(path: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=env, timeout=600, check=False)


def test_builtins_come_through_the_entry_points_in_their_modules_order():
    assert isinstance(METHODS, Registry) and isinstance(DETECTORS, Registry) and isinstance(TASK_TYPES, Registry)
    assert list(TASK_TYPES) == ["classification", "pair_similarity", "retrieval", "generation"]
    assert all(isinstance(t, TaskType) and t.name == n for n, t in TASK_TYPES.items())
    assert all(isinstance(m, Method) for m in METHODS.values())
    assert "halfway" not in METHODS and "nope" not in TASK_TYPES


def test_plugin_merge_method_through_the_cli(tmp_path, plugins):
    a = make_adapter(tmp_path / "a", 0, r=4, alpha=8, targets=("query", "value"))
    b = make_adapter(tmp_path / "b", 1, r=4, alpha=8, targets=("query", "dense"))
    cfg = write_merge_yaml(tmp_path / "merge.yaml", "halfway", [(a, 0.7), (b, 0.3)])
    proc = taskloom(plugins, "merge", cfg, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out" / "merge_report.json").read_text())["method"] == "halfway"
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    want = dense_merge(base_state(), [a, b], [0.7, 0.3], method="task_arithmetic", lam=0.5)
    assert max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want if want[k].dtype != np.int64) < 1e-5


def test_plugin_drift_detector_through_the_cli(tmp_path, plugins):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ref.npy", rng.normal(size=(40, 8)))
    np.save(tmp_path / "same.npy", rng.normal(size=(40, 8)))
    np.save(tmp_path / "shift.npy", rng.normal(loc=1.0, size=(40, 8)))
    outs = {}
    for cur in ("same", "shift"):
        proc = taskloom(plugins, "drift", "--reference", tmp_path / "ref.npy", "--current", tmp_path / f"{cur}.npy",
                        "--method", "mean_shift", "--permutations", "99")
        assert proc.returncode == 0, proc.stderr
        outs[cur] = json.loads(proc.stdout)
    assert outs["shift"]["method"] == "mean_shift" and outs["shift"]["drift"] and outs["shift"]["p_value"] == 0.01
    assert not outs["same"]["drift"] and outs["same"]["statistic"] < outs["shift"]["statistic"]


@pytest.fixture(scope="module")
def match_task(tmp_path_factory) -> Path:
    """A query_match task from the built-in QA corpus (query → its answer)."""
    folder = tmp_path_factory.mktemp("match")
    spec, train, eval_ = build_task("chatterbot-qa")
    for name, rows in (("train", train[:24]), ("eval", eval_[:12])):
        write_rows(folder / f"{name}.jsonl", [{"query": r["query"], "answer": r["positive"]} for r in rows])
    doc = {"name": "qa-match", "type": "query_match", "description": spec["description"],
           "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(doc))
    return folder / "task.yaml"


def test_plugin_task_type_validates_trains_and_evaluates_through_the_cli(tmp_path, plugins, match_task):
    proc = taskloom(plugins, "validate", match_task)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "query_match" in proc.stdout and "passed" in proc.stdout.lower()

    proc = taskloom(plugins, "train", match_task, "--out", tmp_path / "run", "--max-steps", "2", "--batch-size", "8")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["type"], metrics["metric"], metrics["steps"], metrics["eval_rows"]) == ("query_match", "top1", 2, 12)
    assert 0.0 <= metrics["base"] <= 1.0 and 0.0 <= metrics["tuned"] <= 1.0
    assert "InfoNCE of each query against the batch's answers" in (tmp_path / "run" / "adapter" / "README.md").read_text()

    proc = taskloom(plugins, "eval", match_task, "--adapter", tmp_path / "run" / "adapter")
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(proc.stdout)
    assert (scored["type"], scored["metric"], scored["n"]) == ("query_match", "top1", 12)
    assert scored["value"] == pytest.approx(metrics["tuned"], abs=1e-6)


def test_plugin_task_type_checks_its_rows_and_is_unknown_without_the_plugin(tmp_path, plugins, match_task):
    bad = tmp_path / "bad"
    bad.mkdir()
    rows = [json.loads(x) for x in (match_task.parent / "train.jsonl").read_text().splitlines()]
    rows[2]["answer"] = rows[2]["query"]
    write_rows(bad / "train.jsonl", rows)
    (bad / "eval.jsonl").write_text((match_task.parent / "eval.jsonl").read_text())
    (bad / "task.yaml").write_text(match_task.read_text())
    proc = taskloom(plugins, "validate", bad / "task.yaml")
    assert proc.returncode == 2 and "row 3: field 'answer': the same text as the query" in proc.stderr

    proc = taskloom(tmp_path / "nothing-here", "validate", match_task)
    assert proc.returncode == 2
    assert ("type: Input should be 'classification', 'pair_similarity', 'retrieval' or 'generation'"
            in proc.stderr) and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "first_words", "reason"),
    [
        (["merge", "{merge}", "--out", "{out}"], "error: {merge}: plugin missing = no_such_module:Thing (taskloom.merge_methods): cannot be loaded",
         "ModuleNotFoundError: No module named 'no_such_module'"),
        (["drift", "--reference", "{npy}", "--current", "{npy}", "--method", "not_a_detector"],
         "error: plugin not_a_detector = mean_shift:helper (taskloom.detectors): is not a drift detector", "got int 42"),
    ],
    ids=["import-error", "wrong-object"],
)
def test_a_broken_plugin_is_one_line_naming_it(tmp_path, broken, args, first_words, reason):
    np.save(tmp_path / "x.npy", np.zeros((12, 4)))
    merge = tmp_path / "merge.yaml"
    merge.write_text(yaml.safe_dump({"method": "missing", "adapters": [str(tmp_path)]}))
    fill = {"merge": merge, "out": tmp_path / "out", "npy": tmp_path / "x.npy"}
    proc = taskloom(broken, *[a.format(**fill) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(first_words.format(**fill)) and reason in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()
