"""greedy_soup and self_positioning: the search picks the weights, the exact streaming merge writes them."""

from __future__ import annotations

import numpy as np
import pytest
from merge_helpers import base_state, dense_merge, lora_deltas, make_adapter, write_merge_yaml
from safetensors.numpy import load_file

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
                           parameters={"steps": 4, "probe_rows": 16, "batch_rows": 8, "max_length": 32, "lr": 0.2,
                                       "objective": "task_loss", "granularity": "task"})
    rep = merge_from_config(cfg, tmp_path / "out")
    steps = rep["search"]["steps"]
    assert rep["search"]["objective"] == "task_loss" and list(rep["search"]["coefficients"]) == ["all"]
    # exported tasks have a validation split: the probes come from it, rows no adapter was fitted on
    assert rep["search"]["probe_splits"] == {"rt-sentiment": "validation", "lee-similarity": "validation"}
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


def test_self_positioning_distills_each_adapter_with_a_coefficient_per_tensor(tmp_path):
    """One coefficient per input and tensor (the default), learned so that on each task's probe texts
    the merge embeds like that task's adapter; the written model is W₀ + Σ λᵢ,ₖΔᵢ tensor by tensor.
    With only rt-sentiment's texts to match, its adapter's coefficients grow and the other's shrink."""
    from taskloom.tasks.catalog import export_task

    sent = make_adapter(tmp_path / "sent", 3, task="rt-sentiment")  # no head needed to distill
    other = make_adapter(tmp_path / "other", 4, task="lee-similarity", targets=("query", "key"))
    task = export_task("rt-sentiment", tmp_path / "tasks" / "rt-sentiment")
    cfg = write_merge_yaml(tmp_path / "m.yaml", "self_positioning", [(sent, 0.5), (other, 0.5)], tasks=[str(task)],
                           parameters={"steps": 8, "probe_rows": 12, "batch_rows": 8, "max_length": 32, "lr": 0.1,
                                       "objective": "distill"})
    rep = merge_from_config(cfg, tmp_path / "out")
    search = rep["search"]
    assert search["objective"] == "distill" and search["granularity"] == "tensor"
    coeffs = search["coefficients"]
    assert len(coeffs) == 18  # query, key, value of 6 layers
    steps = search["steps"]
    assert steps[-1]["loss"] < 0.6 * steps[0]["loss"]  # relative distance to rt-sentiment's own adapter
    assert search["weights"][0] > 0.7 and search["weights"][1] < 0.3  # means over the tensors
    base, da, db = base_state(), lora_deltas(sent), lora_deltas(other)
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    for key in set(da) | set(db):
        ca, cb = coeffs["encoder." + key] if "encoder." + key in coeffs else coeffs[key]
        want = base[key].astype(np.float64) + ca * da.get(key, 0.0) + cb * db.get(key, 0.0)
        assert np.abs(got[key] - want).max() < 1e-5, key
    untouched = "encoder.layer.0.output.dense.weight"
    assert np.array_equal(got[untouched], base[untouched])


def test_distill_needs_an_adapter_for_every_probed_task(tmp_path, three, capsys):
    from taskloom.tasks.catalog import export_task

    task = export_task("lee-similarity", tmp_path / "tasks" / "lee-similarity")  # none of `three` was trained on it
    cfg = write_merge_yaml(tmp_path / "m.yaml", "self_positioning", [(p, 1.0) for p in three], tasks=[str(task)],
                           parameters={"objective": "distill", "probe_rows": 4})
    assert main(["merge", str(cfg), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "lee-similarity: no input adapter was trained on it" in err and not (tmp_path / "out").exists()
    cfg = write_merge_yaml(tmp_path / "m2.yaml", "self_positioning", [(p, 1.0) for p in three], tasks=[str(task)],
                           parameters={"objective": "nope"})
    assert main(["merge", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "parameters.objective" in capsys.readouterr().err
