"""`taskloom monitor`: test what the server saw against each task's reference, window by window, and
start a retrain when the alarm policy says so.

    taskloom monitor --log runs/requests.jsonl --feature-repo runs/feature_repo --out runs/monitor \
        --webhook http://127.0.0.1:12000/taskloom/drift --secret-file webhook.secret          # follows the log
    taskloom monitor ... --once                                                                # one batch pass

Per poll: read the new lines of the request log (`taskloom.requestlog`), put them in
tumbling windows per task (`windows`), and for each window that is over: embed its texts with the
encoder the references were made with (`data.profile.REFERENCE_ENCODER`), test them against the
task's latest reference sample in Feast (`TaskStore.read_reference_record`) with the chosen
detector, and pass the p-values and effect sizes of all tasks of that window to the alarm policy
(`policy`).

The default method, `auto`, is the pair `mmd+bbsd` when the served view is given (`--model`, the
served model folder with heads/<task>/, and `--held-out TASK=FILE`, rows of the task it never
trained on), else `mmd`. The pair tests what comes in (MMD on embeddings) and what goes out (the
served head's class probabilities against its answers on the held-out rows, `served`), Bonferroni
over the two: MMD alone misses a change in the mix of labels (BENCHMARKS.md, drift power).

An alarm leaves as a signed CloudEvent whose id is its idempotency key, retried on network errors
with the same id; it is on disk before it is sent, and one the receiver could not take stays in the
outbox (`outbox`), tried again with backoff while the monitor runs and when it starts again.

In a cluster the Triton model writes the log (`taskloom.serve.requests_log`, v2 rows), by default
without the texts: `--method bbsd` then tests the probabilities the served head logged against its
answers on the held-out rows, and `--method chi2` the labels it logged against its labels on those
rows (without --held-out, chi2 labels the base-encoder reference with `--model`'s head, a different
function from the served model's: give --held-out); an embedding detector records such windows as
"no_text", untested, with one message per task. The Python client's
`request_log` (v1 rows, always with text) is for local runs; do not let both write one log.

Everything it decides is in --out: windows.jsonl (one line per window and task), alarms.jsonl
(one line per alarm, with its delivery and the retrain run it started), both rewritten atomically
after each window, and drift_report.html, after each poll. Started again on the same --out it picks
up where it stopped: recorded windows are not tested again, a delivered alarm is never sent twice.
With `--metrics-port` the same decisions are Prometheus metrics on /metrics (`taskloom.metrics`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from taskloom.artifacts import write_text
from taskloom.data.profile import REFERENCE_ENCODER
from taskloom.errors import UserError, redact
from taskloom.events.cloudevent import load_secret, send_event
from taskloom.jsonfiles import read_jsonl
from taskloom.metrics import MonitorMetrics
from taskloom.models.encoder import cached_encoder, embed_texts
from taskloom.monitor import outbox
from taskloom.monitor.detectors import DETECTORS, Detector
from taskloom.monitor.drift import MIN_ROWS, check_options, drift_embeddings, drift_pair, pair_parts
from taskloom.monitor.policy import AlarmPolicy, AlarmTracker
from taskloom.monitor.report import write_drift_report
from taskloom.monitor.served import ServedView
from taskloom.monitor.windows import TumblingWindows, Window, iso
from taskloom.requestlog import LogReader
from taskloom.specs import MonitorSpec
from taskloom.store.backends import Local, from_env
from taskloom.store.feature_store import TaskStore

EVENT_TYPE = "io.taskloom.drift.detected"
EVENT_SOURCE = "taskloom/monitor"
SEND_ATTEMPTS = 3  # per alarm and run, on network errors and 5xx; the same event id each time
DELIVERED = ("delivered", "duplicate")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, default=str) + "\n" for r in rows)


class References:
    """Each task's latest reference from Feast, checked once per read (finite, enough rows, the model's dims)."""

    def __init__(self, feature_repo: Path, dims: int, model: str, labeler=None, served: ServedView | None = None):
        self.repo = feature_repo
        self.store = TaskStore(feature_repo)
        self.dims, self.model, self.labeler, self.served = dims, model, labeler, served
        self.current: dict[str, dict] = {}

    def load(self, task: str) -> dict:
        """{"adapter_id", "sample"} (sample = embeddings, or predicted labels for a labels detector; with
        the served view, "probs": the served head's answers on the task's held-out rows)."""
        try:
            rec = self.store.read_reference_record(task)
        except UserError as e:
            if "no drift_reference for" not in str(e):
                raise
            raise UserError(f"unknown task '{task}': feature store {self.repo} has no drift reference for it") from None
        emb, where = (
            rec["embeddings"],
            f"feature store {self.repo}: reference of task '{task}' (adapter '{rec['adapter_id']}')",
        )
        if not np.isfinite(emb).all():
            raise UserError(
                f"{where}: row {int(np.argwhere(~np.isfinite(emb))[0][0]) + 1} contains NaN or infinite values"
            )
        if len(emb) < MIN_ROWS:
            raise UserError(f"{where}: {len(emb)} rows, need at least {MIN_ROWS}")
        if emb.shape[1] != self.dims:
            raise UserError(f"{where}: {emb.shape[1]} dims, but encoder {self.model} embeds {self.dims}")
        sample = self.labeler(task, emb) if self.labeler else emb
        self.current[task] = {"adapter_id": rec["adapter_id"], "sample": sample}
        if self.served is not None:
            self.current[task]["probs"] = self.served.reference(task)
        return self.current[task]


def _served_answers(w: Window, served: ServedView, min_rows: int, classes: int, name: str) -> np.ndarray:
    """The served head's probabilities on a window: as the server logged them (v2 rows), else computed
    from its texts with the served model."""
    if len(w.probs) < min_rows:
        return served.probs(w.task, w.texts)
    bad = next((i for i, p in enumerate(w.probs) if len(p) != classes), None)
    if bad is not None:
        raise UserError(
            f"{name}: row {bad + 1} with probabilities logs {len(w.probs[bad])} classes, the head of --model has "
            f"{classes} (is --model the served model?)"
        )
    return np.asarray(w.probs, dtype=np.float64)


def deliver(
    alarm: dict, webhook: str, secret: bytes, timeout: float, sleep: Callable[[float], None] = time.sleep
) -> dict:
    """Send one alarm as a signed CloudEvent (id = its key); retry network errors and 5xx with the same id."""
    data = {
        k: alarm[k]
        for k in ("task", "first_window_start", "window_start", "windows", "p_values", "q_value", "effect", "method")
    }
    data.update(
        adapter_id=alarm["retrain_adapter_id"], drifted_adapter_id=alarm["adapter_id"], idempotency_key=alarm["key"]
    )
    result = {"status": "undelivered", "http_status": None, "run_id": None, "attempts": 0, "error": None}
    for attempt in range(SEND_ATTEMPTS):
        result["attempts"] = attempt + 1
        try:
            ack = send_event(
                webhook, EVENT_TYPE, data, secret, source=EVENT_SOURCE, timeout=timeout, event_id=alarm["key"]
            )
        except UserError as e:
            result["error"] = str(e)
        else:
            result["http_status"] = ack["status"]
            response = ack["response"] if isinstance(ack["response"], dict) else {}
            if 200 <= ack["status"] < 300:
                result.update(
                    status="duplicate" if response.get("duplicate") else "delivered",
                    run_id=response.get("run_id"),
                    error=None,
                )
                break
            if ack["status"] == 409 and response.get("duplicate"):  # the gateway forwarded this id already
                result.update(status="duplicate", error=None)
                break
            result["error"] = response.get("error") or str(ack["response"])[:200]
            if ack["status"] < 500:  # refused (bad signature, stale): resending the same will not help
                result["status"] = "rejected"
                break
        if attempt + 1 < SEND_ATTEMPTS:
            sleep(0.5 * 2**attempt)
    result["sent_at"] = iso(time.time())
    return result


def run_monitor(
    log: str | Path,
    feature_repo: str | Path,
    out: str | Path,
    spec: MonitorSpec | None = None,
    say: Callable[[str], None] = _stderr,
    metrics: MonitorMetrics | None = None,
) -> dict:
    """Monitor the request log `log`; returns a summary {"windows", "tested", "too_small", "late", "alarms", ...}.
    `metrics`: where to count windows, alarms and retrains (and show each task's latest p-value)."""
    spec = spec or MonitorSpec()
    model, method, tasks, window, min_rows = spec.model, spec.method, spec.tasks, spec.window, spec.min_rows
    alpha, consecutive, min_effect, cooldown = spec.alpha, spec.consecutive, spec.min_effect, spec.cooldown
    permutations, seed, webhook, secret_file = spec.permutations, spec.seed, spec.webhook, spec.secret_file
    once, poll, lateness, max_polls, timeout = spec.once, spec.poll, spec.lateness, spec.max_polls, spec.timeout
    # -- options and inputs: every mistake before anything is written --------------------------
    if method == "auto":
        method = "mmd+bbsd" if spec.held_out else "mmd"
    parts = pair_parts(method)
    detector: Detector | None = None  # a pair runs both of its parts (drift_pair)
    if parts is None:
        check_options(method, alpha, permutations)
        detector = DETECTORS[method]
        description, effect_unit = detector.description, detector.effect
    else:
        for name in parts:
            check_options(name, alpha, permutations)
        description = f"{parts[0]} on embeddings and {parts[1]} on the served head's answers, Bonferroni over the two"
        effect_unit = "effect ÷ its part's minimum (the larger)"
    # the served view: the served head's answers on both sides (a labels detector too, given --held-out)
    uses_served = (
        detector is None or detector.inputs == "probs" or (detector.inputs == "labels" and bool(spec.held_out))
    )
    if uses_served and not spec.held_out:
        raise UserError(
            f"--method {method} compares the served head's answers: give --model (the served model folder, with "
            "heads/<task>/) and --held-out TASK=FILE (rows of the task it never trained on, e.g. its eval.jsonl)"
        )
    if spec.held_out and not uses_served:
        raise UserError(
            f"--held-out is for the served view (--method auto, bbsd, chi2 or mmd+bbsd), not --method {method}"
        )
    unknown = sorted(set(tasks) - set(spec.held_out)) if uses_served else []
    if unknown:
        raise UserError(f"--task {unknown[0]}: no --held-out {unknown[0]}=FILE for the served view")
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < MIN_ROWS:
        raise UserError(f"--min-rows must be an integer >= {MIN_ROWS}, got {min_rows}")
    for name, value in (("--window", window), ("--poll", poll), ("--timeout", timeout)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise UserError(f"{name} must be a positive number of seconds, got {value}")
    if not (isinstance(lateness, (int, float)) and np.isfinite(lateness) and lateness >= 0):
        raise UserError(f"--lateness must be a number of seconds >= 0, got {lateness}")
    policy = AlarmPolicy(
        alpha=alpha,
        consecutive=consecutive,
        cooldown=cooldown,
        min_effect=(1.0 if detector is None else detector.min_effect) if min_effect is None else min_effect,
    )
    log, out, feature_repo = Path(log), Path(out), Path(feature_repo)
    if not log.is_file():
        raise UserError(f"{log}: no such request log")
    if isinstance(from_env(), Local) and not (feature_repo / "feature_store.yaml").is_file():
        raise UserError(f"{feature_repo}: not a feature repository (no feature_store.yaml)")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    secret = None
    if webhook:
        secret = load_secret(secret_file)
    watch = set(tasks or (spec.held_out if uses_served else ())) or None  # the served view: its tasks

    _, encoder = cached_encoder(REFERENCE_ENCODER)
    served = ServedView(model, spec.held_out) if uses_served else None
    if served is not None:
        served.check()
    labeler = None  # chi2 without the served view: --model's head labels base-encoder embeddings
    if detector is not None and detector.inputs == "labels" and served is None:
        heads = ServedView(model, {})
        labeler = lambda task, emb: heads.labels(task, heads.answers(task, emb))  # noqa: E731
    refs = References(feature_repo, int(encoder.config.hidden_size), REFERENCE_ENCODER, labeler, served)
    for task in sorted(watch or ()):
        refs.load(task)  # a named task without a reference is a mistake even before its first request

    # -- state: what earlier runs on this --out decided ----------------------------------------
    windows_path, alarms_path, report_path = out / "windows.jsonl", out / "alarms.jsonl", out / "drift_report.html"
    records = read_jsonl(windows_path) if windows_path.exists() else []
    alarms = read_jsonl(alarms_path) if alarms_path.exists() else []
    alarm_by_key = {a["key"]: a for a in alarms}
    tracker = AlarmTracker(policy)
    for start in sorted({r["start"] for r in records}):
        group = [r for r in records if r["start"] == start]
        tracker.step(
            start,
            {
                r["task"]: (
                    None
                    if r["status"] != "tested"
                    else {"p_value": r["p_value"], "effect": r["effect"], "adapter_id": r["adapter_id"]}
                )
                for r in group
            },
        )
    done = {(r["task"], r["start"]) for r in records}
    if metrics is not None:  # the gauges show each task's latest window from before a restart too
        for r in records:
            if r["status"] == "tested":
                metrics.latest(r["task"], r["method"], r["p_value"], r["statistic"])

    summary: dict[str, Any] = {
        "log": str(log),
        "out": str(out),
        "method": method,
        "windows": 0,
        "tested": 0,
        "too_small": 0,
        "untestable": 0,  # windows whose rows carry nothing the detector tests (no text, no label)
        "late": 0,
        "ignored": 0,
        "alarms": [],
        "report": str(report_path),
    }

    def send(alarm: dict) -> None:
        if not webhook:
            alarm["delivery"] = {
                "status": "not_sent",
                "http_status": None,
                "run_id": None,
                "attempts": 0,
                "error": None,
            }
            return
        assert secret is not None  # loaded whenever there is a webhook
        before = alarm.get("delivery") or {}
        d = deliver(alarm, webhook, secret, timeout)
        d["rounds"] = int(before.get("rounds") or 0) + 1
        d["attempts"] += int(before.get("attempts") or 0)
        if before.get("queued_at"):
            d["queued_at"] = before["queued_at"]
        if d["status"] == "undelivered":
            d["next_try_ts"] = outbox.next_try(d["rounds"], time.time())
        alarm["delivery"] = d
        if metrics is not None and d["status"] == "delivered":  # a duplicate's run was started before
            metrics.retrain(alarm["task"])
        if d["status"] not in DELIVERED:
            say(
                f"warning: alarm {alarm['key'][:12]} for task '{alarm['task']}' not delivered to {redact(webhook)}: "
                f"{d['status']} ({d['error']})"
            )

    def save(report: bool = True) -> None:
        write_text(windows_path, _jsonl(records))
        write_text(alarms_path, _jsonl(alarms))
        if not report:
            return
        write_drift_report(
            report_path,
            records,
            alarms,
            {
                "method": method,
                "detector": description,
                "effect": effect_unit,
                "parts": list(parts or ()),
                "policy": policy.__dict__,
                "window_s": float(window),
                "log": str(log),
            },
        )

    warned: set[str] = set()  # tasks told once that their windows carry nothing the detector tests
    pending = [a for a in alarms if outbox.waiting(a) or a.get("delivery", {}).get("status") == "not_sent"]
    if webhook and pending:  # alarms an earlier run could not deliver: same key, same event id
        for alarm in pending:
            send(alarm)
        save()

    def test_group(group: list[Window]) -> None:
        start = group[0].start
        results: dict[str, dict | None] = {}
        new: list[dict] = []
        # a labels detector takes the labels the server logged as they are, bbsd the probabilities it
        # logged; else the texts are embedded (and scored by the served model, `served`)
        field = None if detector is None or detector.inputs == "embeddings" else detector.inputs
        logged = {w.task for w in group if field and len(getattr(w, field)) >= min_rows}
        big = [w for w in group if w.task not in logged and len(w.texts) >= min_rows]  # one encoder pass for all
        embeds = big and (served is None or detector is None)  # the reference encoder's view is tested
        flat = embed_texts([t for w in big for t in w.texts], model_name=REFERENCE_ENCODER) if embeds else None
        offsets = dict(zip((w.task for w in big), np.cumsum([0] + [len(w.texts) for w in big])))
        for w in group:
            ref = refs.load(w.task)  # re-read: a retrain may have refreshed it
            rec = {
                "task": w.task,
                "start": w.start,
                "end": w.end,
                "start_iso": iso(w.start),
                "n": w.n,
                "adapter_id": ref["adapter_id"],
                "method": method,
            }
            if w.n < min_rows:
                rec["status"] = "too_small"
                results[w.task] = None
                summary["too_small"] += 1
                say(
                    f"window {iso(w.start)} of task '{w.task}': {w.n} requests, below --min-rows {min_rows}: not tested"
                )
            elif w.task not in logged and len(w.texts) < min_rows:  # server rows logged without text
                rec["status"] = {"labels": "no_labels", "probs": "no_probs"}.get(field or "", "no_text")
                results[w.task] = None
                summary["untestable"] += 1
                if w.task not in warned:  # one message per task, not one per window
                    warned.add(w.task)
                    say(
                        f"task '{w.task}': window {iso(w.start)} has {w.n} requests, {len(w.texts)} with text"
                        + (
                            f" and {len(w.labels)} with a label: method '{method}' needs the served head's labels"
                            " or the texts; its windows are not tested"
                            if field == "labels"
                            else f" and {len(w.probs)} with probabilities: method '{method}' needs the served head's"
                            " probabilities or the texts; its windows are not tested"
                            if field == "probs"
                            else f": method '{method}' embeds texts, so its windows are not tested (the server logs"
                            " text only with includeText; --method chi2 or bbsd test the answers it logs)"
                        )
                    )
            else:
                names = (f"reference of task '{w.task}'", f"window {iso(w.start)} of '{w.task}'")
                if w.task in logged and field == "labels":
                    sample = np.asarray(w.labels, dtype=str)
                elif flat is not None:  # embedded above: this window is big enough
                    emb = flat[offsets[w.task] : offsets[w.task] + len(w.texts)]
                    sample = labeler(w.task, emb) if labeler else emb
                if served is None:
                    r = drift_embeddings(ref["sample"], sample, method, alpha, permutations, seed, names)
                elif detector is not None and detector.inputs == "labels":  # the served head's labels, both sides
                    if w.task not in logged:
                        sample = served.labels(w.task, served.probs(w.task, w.texts))
                    r = drift_embeddings(
                        served.labels(w.task, ref["probs"]), sample, method, alpha, permutations, seed, names
                    )
                else:
                    probs = _served_answers(w, served, min_rows, ref["probs"].shape[1], names[1])
                    r = (
                        drift_pair(
                            (ref["sample"], ref["probs"]), (sample, probs), method, alpha, permutations, seed, names
                        )
                        if detector is None
                        else drift_embeddings(ref["probs"], probs, method, alpha, permutations, seed, names)
                    )
                rec.update(
                    status="tested",
                    statistic=r["statistic"],
                    p_value=r["p_value"],
                    effect=r["effect"],
                    n_reference=r["n_reference"],
                    **{
                        k: v for k, v in r.items() if k.startswith(("p_", "effect_", "n_reference_")) and k != "p_value"
                    },
                )
                results[w.task] = {"p_value": r["p_value"], "effect": r["effect"], "adapter_id": ref["adapter_id"]}
                summary["tested"] += 1
            new.append(rec)
        decisions, raised = tracker.step(start, results)
        for rec in new:
            rec.update(decisions[rec["task"]])
            if metrics is not None and rec["status"] == "tested":
                metrics.window(rec["task"], method, rec["p_value"], rec["statistic"], rec["hit"])
        for alarm in raised:
            alarm.update(method=method, retrain_adapter_id=f"{alarm['task']}-{alarm['key'][:8]}")
            old = alarm_by_key.get(alarm["key"])
            if old is not None and old.get("delivery", {}).get("status") in DELIVERED:
                continue  # the same alarm was raised and delivered before: never twice
            if old is not None:
                alarms.remove(old)
            if webhook:  # in the outbox on disk before it leaves: a kill while sending resends the same id
                kept = old.get("delivery") if old is not None and outbox.waiting(old) else None
                alarm["delivery"] = kept or outbox.pending(alarm, iso(time.time()))
            alarms.append(alarm)
            alarm_by_key[alarm["key"]] = alarm
            if webhook:
                save(report=False)
            send(alarm)
            summary["alarms"].append(alarm["key"])
            if metrics is not None:
                metrics.alarm(alarm["task"])
            say(
                f"alarm {alarm['key'][:12]}: task '{alarm['task']}' drifted in {len(alarm['windows'])} windows in a row "
                f"since {alarm['first_window_start']} (effect {alarm['effect']:.3f}); delivery: {alarm['delivery']['status']}"
                + (f", run {alarm['delivery']['run_id']}" if alarm["delivery"].get("run_id") else "")
            )
        records.extend(new)
        summary["windows"] += len(new)
        save(report=False)  # decisions and deliveries on disk before the next window: never sent twice

    # -- the loop ----------------------------------------------------------------------------
    reader = LogReader(log)
    win = TumblingWindows(window, lateness)
    polls = 0
    while True:
        rows = reader.poll(final=once)
        for row in rows:
            if watch is not None and row["task"] not in watch:
                summary["ignored"] += 1
                continue
            if row["task"] not in refs.current:
                refs.load(row["task"])
            if (row["task"], win.start_of(row["ts"])) in done:
                continue
            win.add(row)
        closed = win.flush() if once else win.close(until=time.time())
        if once:
            if not closed and not records:
                what = f" for task(s) {', '.join(sorted(watch))}" if watch else ""
                raise UserError(f"{log}: no requests{what} to monitor")
            if closed and max(w.n for w in closed) < min_rows and not records:
                big = max(closed, key=lambda w: w.n)
                raise UserError(
                    f"{log}: no window has at least {min_rows} requests (largest: {big.n}, task "
                    f"'{big.task}' at {iso(big.start)}); use a longer --window or a smaller --min-rows"
                )
        for start in sorted({w.start for w in closed}):
            test_group([w for w in closed if w.start == start])
        retry = outbox.due(alarms, time.time()) if webhook else []
        for alarm in retry:  # the outbox: alarms the receiver could not take yet, same event id
            send(alarm)
        if closed or retry:
            save()
        summary["late"] = win.late
        polls += 1
        if once or (max_polls is not None and polls >= max_polls):
            break
        time.sleep(poll)
    if not records:
        save()
    summary["delivered"] = sum(a.get("delivery", {}).get("status") in DELIVERED for a in alarms)
    summary["run_ids"] = [a["delivery"]["run_id"] for a in alarms if a.get("delivery", {}).get("run_id")]
    return summary
