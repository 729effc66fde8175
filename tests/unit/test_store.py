"""The Feast task store: what is written is read back online at once, equal; history stays offline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskloom.errors import UserError
from taskloom.store.feature_store import TaskStore

CENTROID = np.random.default_rng(0).normal(size=384).astype(np.float32) / 20
PROFILE = {"task_id": "rt-sentiment", "type": "classification", "rows": 3000, "label_entropy": 0.9991,
           "mean_length": 121.37, "centroid": CENTROID.tolist(), "reference": np.zeros((2, 384))}
METRICS = {"task": "rt-sentiment", "type": "classification", "metric": "accuracy", "base": 0.479, "tuned": 0.781,
           "train_seconds": 80.5}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = TaskStore(tmp_path_factory.mktemp("feature_repo"))
    s.apply()
    return s


def test_repository_files_are_written_on_first_use(store):
    text = (store.repo_dir / "feature_store.yaml").read_text()
    for line in ("provider: local", "type: sqlite", "type: file", "entity_key_serialization_version: 3"):
        assert line in text
    assert (store.repo_dir / "definitions.py").exists() and (store.data_dir / "registry.db").exists()
    names = {fv.name for fv in store.fs.list_feature_views()}
    assert names == {"task_profile", "adapter_metrics", "drift_reference"}
    assert {e.name for e in store.fs.list_entities()} >= {"task", "adapter"}


def test_profile_round_trip_online(store):
    store.write_task_profile(PROFILE)
    got = store.read_task("rt-sentiment")
    assert {k: got[k] for k in ("task_id", "type", "rows")} == {"task_id": "rt-sentiment", "type": "classification",
                                                                "rows": 3000}
    assert got["label_entropy"] == pytest.approx(0.9991, abs=1e-12)
    assert got["mean_length"] == pytest.approx(121.37, abs=1e-12)
    assert len(got["centroid"]) == 384
    assert np.abs(np.asarray(got["centroid"]) - CENTROID).max() < 1e-6


def test_adapter_metrics_round_trip_and_latest_wins(store):
    store.write_adapter_metrics("rt-sentiment-v1", "rt-sentiment", METRICS)
    first = store.read_adapter("rt-sentiment-v1")
    assert {k: first[k] for k in ("adapter_id", "task_id", "metric", "base", "tuned", "merged")} == {
        "adapter_id": "rt-sentiment-v1", "task_id": "rt-sentiment", "metric": "accuracy", "base": 0.479,
        "tuned": 0.781, "merged": None}
    store.write_adapter_metrics("rt-sentiment-v1", "rt-sentiment", {**METRICS, "merged": 0.774})
    assert store.read_adapter("rt-sentiment-v1")["merged"] == pytest.approx(0.774)
    history = pd.read_parquet(store.data_dir / "adapter_metrics.parquet")
    assert len(history[history["adapter_id"] == "rt-sentiment-v1"]) == 2


def test_reference_round_trip_and_versions(store):
    rng = np.random.default_rng(1)
    v1 = rng.normal(size=(120, 384)).astype(np.float32)
    v2 = rng.normal(size=(80, 384)).astype(np.float32)
    store.write_reference("rt-sentiment", "rt-sentiment-v1", v1)
    np.testing.assert_array_equal(store.read_reference("rt-sentiment"), v1)
    store.write_reference("rt-sentiment", "rt-sentiment-v2", v2)
    np.testing.assert_array_equal(store.read_reference("rt-sentiment"), v2)  # online: the latest
    np.testing.assert_array_equal(store.read_reference("rt-sentiment", "rt-sentiment-v1"), v1)  # offline: a version
    assert [v["adapter_id"] for v in store.reference_versions("rt-sentiment")] == ["rt-sentiment-v1", "rt-sentiment-v2"]


def test_a_new_store_object_reads_what_was_written(store):
    again = TaskStore(store.repo_dir)
    assert again.read_task("rt-sentiment")["rows"] == 3000


def test_offline_history_through_feast(store):
    entity = pd.DataFrame({"task_id": ["rt-sentiment"], "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
    df = store.fs.get_historical_features(entity_df=entity, features=["task_profile:rows", "task_profile:centroid"]).to_df()
    assert int(df["rows"].iloc[0]) == 3000
    assert np.abs(np.asarray(df["centroid"].iloc[0]) - CENTROID).max() < 1e-6


def test_unknown_ids_and_bad_values_are_user_errors(store):
    with pytest.raises(UserError, match="no task_profile for task 'nope'"):
        store.read_task("nope")
    with pytest.raises(UserError, match="no adapter_metrics for adapter 'nope'"):
        store.read_adapter("nope")
    with pytest.raises(UserError, match="no drift reference for task 'rt-sentiment' and adapter 'v9'"):
        store.read_reference("rt-sentiment", "v9")
    with pytest.raises(UserError, match="missing field 'centroid'"):
        store.write_task_profile({k: v for k, v in PROFILE.items() if k != "centroid"})
    with pytest.raises(UserError, match="NaN"):
        store.write_reference("t", "a", np.full((3, 4), np.nan))
    with pytest.raises(UserError, match="missing field 'tuned'"):
        store.write_adapter_metrics("a", "t", {"metric": "accuracy", "base": 0.5})


def test_feast_stays_quiet(tmp_path, capfd):
    s = TaskStore(tmp_path / "repo")
    s.apply()
    s.write_task_profile(PROFILE)
    s.read_task("rt-sentiment")
    s.write_reference("rt-sentiment", "v1", np.ones((10, 8), dtype=np.float32))
    s.read_reference("rt-sentiment")
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""


def test_parallel_steps_open_a_new_repository_at_once(tmp_path):
    """Pipeline steps run in parallel (a KFP ParallelFor, locally and in a cluster) and may be the first
    to open the shared repository: each must see the views the other registers, and every write lands."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import sys, time
        from taskloom.store.feature_store import TaskStore
        import numpy as np
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
        store = TaskStore({str(tmp_path / "repo")!r})
        store.write_task_profile({{"task_id": sys.argv[1], "type": "classification", "rows": 10, "label_entropy": 1.0,
                                   "mean_length": 5.0, "centroid": np.ones(384).tolist()}})
    """)
    import time

    at = time.time() + 6  # after every process has imported feast
    procs = [subprocess.Popen([sys.executable, "-c", script, f"task-{i}", str(at)], stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-800:] for e in errors]
    store = TaskStore(tmp_path / "repo")
    assert [store.read_task(f"task-{i}")["rows"] for i in range(4)] == [10] * 4
