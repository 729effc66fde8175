"""`build_bank` end to end on three real tasks with two training steps each: staged tasks, trained
adapters, Feast records, bank.json, and a killed build finished by a re-run."""

import json

import pytest

from taskloom.errors import UserError
from taskloom.metalora.build import build_bank
from taskloom.specs import load_task
from taskloom.store.feature_store import TaskStore

pytestmark = pytest.mark.e2e

LIMIT, STEPS = 3, 2


def test_build_then_resume(tmp_path):
    out = tmp_path / "bank"
    bank = build_bank(out, quick=True, seed=3, progress=False, limit=LIMIT, max_steps=STEPS)

    on_disk = json.loads((out / "bank.json").read_text())
    assert on_disk["tasks"] == bank["tasks"] and len(bank["tasks"]) == LIMIT
    assert on_disk["quick"] is True and on_disk["seed"] == 3 and on_disk["rank"] == 8
    assert isinstance(on_disk["targets"], str) and on_disk["overlap_removed"] > 0
    store = TaskStore(out / "feature_repo")
    for entry in bank["tasks"]:
        name = entry["name"]
        task = load_task(out / entry["task"] / "task.yaml")
        assert task.name == name and task.description == entry["description"]
        assert (out / entry["task"] / "val.jsonl").is_file()
        run = out / entry["adapter"]
        assert (run / "adapter" / "adapter_config.json").is_file()
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["steps"] == STEPS and metrics["rank"] == 8
        assert entry["metrics"]["base"] == metrics["base"] and entry["metrics"]["tuned"] == metrics["tuned"]
        assert sum(entry["rows"].values()) > 0 and entry["tier"] in ("seen", "val", "near", "far")
        assert store.read_adapter(name)["tuned"] == pytest.approx(metrics["tuned"])
        assert store.read_task(name)["rows"] == entry["rows"]["train"]

    # a build killed while training its second task: that adapter's run folder is half there
    killed = bank["tasks"][1]["name"]
    (out / "adapters" / killed / "metrics.json").unlink()
    kept = out / "adapters" / bank["tasks"][0]["name"] / "adapter" / "adapter_model.safetensors"
    before = kept.stat().st_mtime_ns
    (out / "bank.json").unlink()

    again = build_bank(out, quick=True, seed=3, progress=False, limit=LIMIT, max_steps=STEPS)
    assert again["trained_now"] == 1
    assert kept.stat().st_mtime_ns == before
    assert (out / "adapters" / killed / "metrics.json").is_file()
    assert [t["name"] for t in again["tasks"]] == [t["name"] for t in bank["tasks"]]

    # staged rows that are not the ones the task is built with: its adapter would not match them
    staged = out / "tasks" / killed / "train.jsonl"
    staged.write_text(staged.read_text().splitlines()[0] + "\n")
    with pytest.raises(UserError, match="rows differ"):
        build_bank(out, quick=True, seed=3, progress=False, limit=LIMIT, max_steps=STEPS)

    # the same folder with other settings is refused before anything is written
    with pytest.raises(UserError, match="other settings"):
        build_bank(out, quick=True, seed=4, progress=False, limit=LIMIT, max_steps=STEPS)
