"""The whole loop, short: what `taskloom demo --quick` does, asserted end to end.

Real GX validation, real Feast, real LoRA training, a real merge, the real Triton server, a real MMD
test, a signed CloudEvent through the embedded receiver and a kfp.local retrain run.
"""

import json

import pytest

pytestmark = pytest.mark.e2e  # tier: the whole loop: the quick demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from taskloom.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    res = run_demo(out, quick=True)
    return out, res, json.loads((out / "summary.json").read_text())


def test_every_task_validated_trained_and_merged(demo):
    _, _, s = demo
    assert set(s["tasks"]) == {"rt-sentiment", "chatterbot-qa"}
    for name, t in s["tasks"].items():
        assert t["validation"] == "passed"
        for key in ("base", "tuned", "merged"):
            assert 0.0 <= t[key] <= 1.0, (name, key, t[key])
    # retrieval gains clearly even from a short run; the merged encoder keeps most of it
    qa = s["tasks"]["chatterbot-qa"]
    assert qa["tuned"] > qa["base"] + 0.02


def test_served_embeddings_match_in_process(demo):
    _, _, s = demo
    assert s["serving"]["min_cosine_vs_in_process"] >= 0.999
    assert 0 < s["serving"]["p50_ms"] <= s["serving"]["p99_ms"]


def test_drift_seen_on_shifted_traffic_only_and_retrain_ran(demo):
    _, _, s = demo
    assert s["drift"]["shifted"]["drift"] is True
    assert s["drift"]["shifted"]["p_value"] < 0.01
    assert s["drift"]["in_domain"]["drift"] is False
    assert s["retrain"]["run_id"]
    assert s["retrain"]["state"] == "SUCCEEDED"
    assert [e["window"] for e in s["retrain"]["events"]] == ["shifted"]


def test_report_and_feast_records(demo):
    out, _, s = demo
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert "chatterbot-qa" in html
    from taskloom.store.feature_store import TaskStore

    store = TaskStore(out / "feature_repo")
    profile = store.read_task("rt-sentiment")
    assert profile["rows"] > 0 and len(profile["centroid"]) == 384
