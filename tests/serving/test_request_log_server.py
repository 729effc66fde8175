"""The real bundled tritonserver writes the request log itself: requests in, v2 rows out, a served-requests
metric on its metrics port, and `taskloom monitor` windows the rows.

Three servers, as a deployment configures them through the environment (taskloom.serve.requests_log):
texts logged (two models: MiniLM + a head, MiniLM + a LoRA adapter with its own head), texts not
logged (the chart's default), and a sample rate of 0.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.request

import numpy as np
import pytest
from serve_helpers import TEXTS, make_adapter, make_head_model

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.metrics import SERVED_REQUESTS
from taskloom.monitor.service import run_monitor
from taskloom.requestlog import LogReader
from taskloom.serve.client import TritonClient
from taskloom.serve.launcher import TritonServer
from taskloom.serve.repository import build_repository
from taskloom.specs import MonitorSpec

pytestmark = pytest.mark.e2e  # tier: real Triton servers

# 24 texts: enough for a window (the monitor's minimum is 10) and for a reference sample
MORE = [
    f"{a} {b}"
    for a in ("A gripping", "A tedious", "An uneven", "A warm", "A clumsy", "A sharp")
    for b in ("thriller with a great cast.", "comedy that runs too long.", "drama about two brothers.", "debut.")
]
WINDOW = 1e10  # one window holds every row of the test, whatever the clock says


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("reqlog")
    head_model = make_head_model(root)
    adapter = make_adapter(root, "sent", seed=1, labels=["pos", "neg"])
    repo = build_repository(head_model, root / "repo", name="toy", head_task="toy", max_batch_size=8)
    build_repository("minilm", repo, name="multi", adapters={"sent": adapter})
    return {"root": root, "repo": repo, "head_model": head_model}


@contextlib.contextmanager
def serving(repo, models: list[str], log, **env):
    """A server whose environment asks its models to log to `log` (env: SAMPLE_RATE=..., TEXT=...)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TASKLOOM_REQUEST_LOG", str(log))
        for k, v in env.items():
            mp.setenv(f"TASKLOOM_REQUEST_LOG_{k}", v)
        server = TritonServer(repo, model_control="explicit", models=models, exit_timeout=1)
        server.start(timeout=180)  # the server took its environment: the test's own goes back now
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def with_text(models):
    log = models["root"] / "with-text" / "requests.jsonl"
    with serving(models["repo"], ["toy", "multi"], log, TEXT="true") as s:
        yield s, log


@pytest.fixture(scope="module")
def without_text(models):
    log = models["root"] / "without-text" / "requests.jsonl"
    with serving(models["repo"], ["toy"], log) as s:  # the default: no text
        yield s, log


def rows_of(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def served_count(server, **labels) -> float | None:
    """The served-requests counter for these labels on the server's /metrics (None: not exported)."""
    text = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(server.metrics_url).read().decode()
    for line in text.splitlines():
        m = re.match(rf"^{SERVED_REQUESTS}\{{(.*)\}} (\S+)$", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None


def test_each_served_text_is_one_row_with_the_response_label_and_probs(with_text):
    server, log = with_text
    with TritonClient(server.http_url, model="toy") as c:
        out = c.infer(TEXTS)
        with pytest.raises(UserError, match="TEXT row 0: empty text"):
            c.infer([""])  # refused: not served, not logged
    rows = rows_of(log)
    assert len(rows) == len(TEXTS)
    assert [r["text"] for r in rows] == TEXTS
    assert {(r["v"], r["task"], r["model"], r["version"], r["adapter"]) for r in rows} == {(2, "toy", "toy", "1", None)}
    assert [r["label"] for r in rows] == out["label"]
    np.testing.assert_allclose([r["probs"] for r in rows], out["probs"], atol=1e-5)
    assert served_count(server, task="toy", adapter="", version="1") == len(TEXTS)


def test_an_adapter_logs_its_task_and_its_head_and_the_base_without_a_head_no_label(with_text):
    server, log = with_text
    before = len(rows_of(log))
    with TritonClient(server.grpc_url, model="multi", protocol="grpc") as c:
        out = c.infer(TEXTS[:3], adapter="sent")
        base = c.infer(TEXTS[3:])
    assert base["label"] is None
    rows = rows_of(log)[before:]
    assert [(r["task"], r["adapter"], r["model"]) for r in rows] == [("sent", "sent", "multi")] * 3 + [
        ("multi", None, "multi")
    ] * 2
    assert [r["label"] for r in rows[:3]] == out["label"] and "label" not in rows[3] and "probs" not in rows[3]
    np.testing.assert_allclose([r["probs"] for r in rows[:3]], out["probs"], atol=1e-5)
    assert served_count(server, task="sent", adapter="sent", version="1") == 3
    assert served_count(server, task="multi", adapter="", version="1") == 2


def test_without_include_text_rows_carry_no_text(without_text):
    server, log = without_text
    with TritonClient(server.grpc_url, model="toy", protocol="grpc") as c:
        out = c.infer_batched(MORE, batch_size=8)
    rows = rows_of(log)
    assert len(rows) == len(MORE) and not any("text" in r for r in rows)
    assert [r["label"] for r in rows] == out["label"]
    np.testing.assert_allclose([r["probs"] for r in rows], out["probs"], atol=1e-5)
    assert len(LogReader(log).poll(final=True)) == len(MORE)


def test_sample_rate_zero_writes_no_row_but_counts_what_it_served(models):
    log = models["root"] / "rate-zero" / "requests.jsonl"
    with serving(models["repo"], ["toy"], log, SAMPLE_RATE="0", TEXT="true") as server:
        with TritonClient(server.http_url, model="toy") as c:
            c.infer(TEXTS)
        assert served_count(server, task="toy", adapter="", version="1") == len(TEXTS)
    assert not log.exists()


@pytest.fixture(scope="module")
def feature_repo(models):
    from taskloom.models.encoder import embed_texts
    from taskloom.store.feature_store import TaskStore

    store = TaskStore(models["root"] / "feature_repo")
    store.apply()
    store.write_reference("toy", "toy-v1", embed_texts(MORE))
    return models["root"] / "feature_repo"


def test_the_monitor_windows_server_rows_chi2_on_labels_and_skips_embeddings_without_text(
    without_text, models, feature_repo, capsys
):
    server, log = without_text
    if not log.exists():  # run alone: serve the rows here
        with TritonClient(server.grpc_url, model="toy", protocol="grpc") as c:
            c.infer_batched(MORE, batch_size=8)
    out = models["root"] / "mon-chi2"
    args = ["monitor", "--log", str(log), "--feature-repo", str(feature_repo), "--out", str(out), "--once"]
    args += ["--model", str(models["head_model"]), "--window", str(WINDOW), "--min-rows", "10"]
    assert main([*args, "--method", "chi2", "--permutations", "50"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["windows"], summary["tested"]) == (1, 1)
    (rec,) = [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
    # the window's labels are the server's own answers on the reference texts: the same distribution
    assert rec["status"] == "tested" and rec["method"] == "chi2" and rec["n"] == len(MORE)
    assert rec["p_value"] > 0.5 and rec["effect"] < 0.05

    said: list[str] = []
    mmd = run_monitor(
        log,
        feature_repo,
        models["root"] / "mon-mmd",
        MonitorSpec(model=str(models["head_model"]), window=WINDOW, min_rows=10, permutations=50, once=True),
        say=said.append,
    )
    assert (mmd["windows"], mmd["tested"], mmd["untestable"]) == (1, 0, 1)
    assert len(said) == 1 and "method 'mmd' embeds texts, so its windows are not tested" in said[0]
    (rec,) = [json.loads(x) for x in (models["root"] / "mon-mmd" / "windows.jsonl").read_text().splitlines()]
    assert rec["status"] == "no_text" and "p_value" not in rec


def test_the_monitor_embeds_server_rows_that_carry_text(with_text, models, feature_repo):
    server, log = with_text
    with TritonClient(server.http_url, model="toy") as c:
        c.infer_batched(MORE, batch_size=8)
    summary = run_monitor(
        log,
        feature_repo,
        models["root"] / "mon-text",
        MonitorSpec(window=WINDOW, min_rows=10, permutations=50, once=True, tasks=["toy"]),
        say=lambda s: None,
    )
    toy = sum(r["task"] == "toy" for r in rows_of(log))
    assert (summary["windows"], summary["tested"], summary["ignored"]) == (1, 1, len(rows_of(log)) - toy)
    (rec,) = [json.loads(x) for x in (models["root"] / "mon-text" / "windows.jsonl").read_text().splitlines()]
    assert rec["status"] == "tested" and rec["method"] == "mmd" and rec["n"] == toy
