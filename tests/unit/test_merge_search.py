"""greedy_soup and self_positioning: the search picks the weights, the exact streaming merge writes them."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from merge_helpers import base_state, dense_merge, lora_deltas, make_adapter, write_merge_yaml
from taskloom.cli import main
from taskloom.merge import merge_adapters, merge_from_config
from taskloom.specs import MergeSpec

KEY = "encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    root = tmp_path_factory.mktemp("soup")
    return [make_adapter(root / n, i, task=n) for i, n in enumerate(["a", "b", "c"])]


def _distance_scorer(target):
    """A scorer that prefers models whose first query weight is close to `target`."""

    def score(tok, model):
        w = model.encoder.layer[0].attention.self.query.weight.detach().double().numpy()
        return {"probe": -float(np.linalg.norm(w - target))}

    return score


def test_greedy_soup_keeps_only_ingredients_that_help(tmp_path, three):
    base = base_state()
    da, db = (lora_deltas(p)[KEY] for p in three[:2])
    spec = MergeSpec(method="greedy_soup", adapters=three)
    # the best model is the mean of a and b: a (or b) alone first, then the other joins, c is refused
    rep = merge_adapters(spec, tmp_path / "ab", score=_distance_scorer(base[KEY] + (da + db) / 2))
    assert rep["search"]["soup"] == [0, 1] and rep["search"]["weights"] == [1.0, 1.0, 0.0]
    assert [t.get("kept") for t in rep["search"]["tried"][3:]] == [True, False]
    got = load_file(str(tmp_path / "ab" / "model.safetensors"))
    want = dense_merge(base, three, [1.0, 1.0, 0.0], method="linear")
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want if k != "embeddings.position_ids") < 1e-5
    # when a alone is best, nothing joins
    rep = merge_adapters(spec, tmp_path / "a", score=_distance_scorer(base[KEY] + da))
    assert rep["search"]["soup"] == [0] and rep["search"]["final_method"] == "linear"


def test_self_positioning_learns_coefficients_on_balanced_probes(tmp_path):
    from taskloom.tasks.catalog import export_task

    sent = make_adapter(tmp_path / "sent", 3, task="rt-sentiment", head_labels=["fresh", "rotten"])
    sim = make_adapter(tmp_path / "sim", 4, task="lee-similarity")
    tasks = [export_task(n, tmp_path / "tasks" / n) for n in ("rt-sentiment", "lee-similarity")]
    cfg = write_merge_yaml(tmp_path / "m.yaml", "self_positioning", [(sent, 0.5), (sim, 0.5)],
                           tasks=[str(t) for t in tasks],
                           parameters={"steps": 4, "probe_rows": 16, "batch_rows": 8, "max_length": 32, "lr": 0.2})
    rep = merge_from_config(cfg, tmp_path / "out")
    steps = rep["search"]["steps"]
    assert len(steps) == 4 and set(steps[0]["task_losses"]) == {"rt-sentiment", "lee-similarity"}
    assert all(np.isfinite(s["loss"]) for s in steps)
    lam = rep["search"]["weights"]
    assert steps[0]["lambda"] != [0.5, 0.5] and lam != [0.5, 0.5]  # Adam moved both coefficients
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    want = dense_merge(base_state(), [sent, sim], lam, method="task_arithmetic")
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want if k != "embeddings.position_ids") < 1e-5


def test_search_methods_need_tasks(tmp_path, three, capsys):
    cfg = write_merge_yaml(tmp_path / "m.yaml", "self_positioning", [(p, 1.0) for p in three])
    assert main(["merge", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "list the task.yaml files" in capsys.readouterr().err and not (tmp_path / "out").exists()
