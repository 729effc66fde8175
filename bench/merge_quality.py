"""Merge quality on the four built-in tasks: each single adapter, each merge method, one table.

    OMP_NUM_THREADS=2 .venv/bin/python bench/merge_quality.py        # seeds 0 1 2; --max-steps N for a shorter run

One LoRA adapter per task (`train_adapter` with the library defaults: 2 epochs, r=8, alpha=16,
lr 1e-3, batch 32; or `--max-steps N`) for each seed in --seeds, cached in .cache/bench-adapters/.
Every cell is the mean ± 95 % CI over those seeds; the gate column counts the seeds whose model passed.
Every row is a full model written by `taskloom.merge.merge_adapters` and scored with
`taskloom.train.evaluate.evaluate_task` on every task's EVAL split (classification through the head
trained with that task's adapter, copied into the merged model):
- base: the metrics.json `base` of each run (MiniLM; a probe head for classification);
- single <task>: W₀ + Δ of that adapter alone (task_arithmetic, weight 1 for it and 0 for the rest);
- linear (mean of the task vectors); task_arithmetic with λ chosen from a grid by the mean score on
  validation-split probe rows (64 per task, or all of a smaller split; seed 0: the rows
  self_positioning learns on), the fair reference for the two methods below; ties and dare_ties
  (density 0.5, λ = 1);
- delta_guided with raw deviations (γ = 1, λ from the grid) and with deviations normalised per
  tensor (the default; γ and λ chosen together on the same probe rows);
- self_positioning from task_arithmetic's λ with one coefficient per input and tensor, for each
  objective: `task_loss` (the default: the training losses on the probe rows) and `distill` (match
  each adapter's embeddings on its own task's probe texts), searched with the adapters' seed;
- joint multi-task: one adapter trained on all four tasks (`taskloom.train.lora.train_tasks`, same
  defaults), written as W₀ + Δ like the single adapters and scored the same way (its heads are under
  adapter/heads/<task>/), with --joint.
The last column runs the promotion gate (each task keeps ≥ 90 % of its adapter's gain). Scores are
cached in .cache/bench-adapters/quality-<default|stepsN>-seed<S>.json: a rerun only evaluates what is new.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_adapters import CACHE, task_file, trained, trained_joint

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

TASKS = ["rt-sentiment", "chatterbot-qa", "lee-similarity", "chatterbot-topic"]
LAMBDAS = [0.3, 0.5, 0.7, 1.0]
DG_GRID = [(gamma, lam) for gamma in (1.0, 2.0) for lam in (0.5, 0.7, 1.0, 1.4)]  # normalised delta_guided
PROBE_ROWS, PROBE_SEED = 64, 0


def merge(name: str, method: str, adapters: list[Path], weights: list[float], work: Path, **extra) -> Path:
    from taskloom.merge import merge_adapters
    from taskloom.specs import MergeSpec

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    spec = MergeSpec(method=method, base_model="minilm", output="full",
                     adapters=[{"path": a, "weight": w} for a, w in zip(adapters, weights)], **extra)
    report = merge_adapters(spec, out)
    (work / f"{name}.search.json").write_text(json.dumps(report.get("search", {}).get("weights", weights)))
    return out


def evaluate_all(model: Path) -> dict[str, float]:
    from taskloom.specs import load_task
    from taskloom.train.evaluate import evaluate_task

    return {t: float(evaluate_task(load_task(task_file(t)), model=model, device="cpu")["value"]) for t in TASKS}


def probe_score(model: Path, probes) -> float:
    """Mean over tasks of the task metric on the train-split probe rows."""
    from taskloom.merge.search import probe_scorer
    from taskloom.models.encoder import load_encoder

    tok, enc = load_encoder(model)
    enc.eval()
    scores = probe_scorer(probes)(tok, enc)
    return sum(scores.values()) / len(scores)


T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t, two-sided 95 %, by degrees of freedom


def mean_ci(values: list[float]) -> str:
    """'mean ± half-width of the 95 % CI over seeds' (the mean alone for one seed)."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.4f}"
    return f"{m:.4f} ± {T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values)):.4f}"


def one_seed(seed: int, args) -> tuple[list[tuple[str, dict]], dict, dict, list[str]]:
    """Every row for the adapters trained with `seed` (self_positioning searches with the same seed):
    (rows, base, tuned, notes)."""
    from taskloom.merge.search import load_probes

    runs = {t: trained(t, args.max_steps or None, seed) for t in TASKS}
    metrics = {t: json.loads((runs[t] / "metrics.json").read_text()) for t in TASKS}
    adapters = [runs[t] / "adapter" for t in TASKS]
    base = {t: float(metrics[t]["base"]) for t in TASKS}
    tuned = {t: float(metrics[t]["tuned"]) for t in TASKS}

    tag = (f"steps{args.max_steps}" if args.max_steps else "default") + f"-seed{seed}"
    cache_file = CACHE / f"quality-{tag}.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    work = CACHE / f"quality-{tag}-models"
    work.mkdir(parents=True, exist_ok=True)

    def row(key: str, build) -> dict:
        if key not in cache:
            t0 = time.perf_counter()
            folder = build()
            cache[key] = {"scores": evaluate_all(folder), "seconds": round(time.perf_counter() - t0, 1)}
            shutil.rmtree(folder, ignore_errors=True)
            cache_file.write_text(json.dumps(cache, indent=1))
        return cache[key]

    n = len(TASKS)
    results: list[tuple[str, dict]] = [("base (MiniLM)", {"scores": base})]
    for i, t in enumerate(TASKS):
        onehot = [1.0 if j == i else 0.0 for j in range(n)]
        results.append((f"single: {t}", row(f"single:{t}", lambda oh=onehot, t=t: merge(f"single-{t}", "task_arithmetic", adapters, oh, work))))

    # λ (and γ) chosen by the mean probe score on validation rows, for task_arithmetic and delta_guided.
    probes = None

    def get_probes():
        nonlocal probes
        if probes is None:
            probes = load_probes([task_file(t) for t in TASKS],
                                 [SimpleNamespace(task=t, folder=a) for t, a in zip(TASKS, adapters)], PROBE_ROWS, PROBE_SEED)
        return probes

    def probe_grid(key: str, method: str, grid: dict[str, dict]) -> dict[str, float]:
        if key not in cache:
            scores = {}
            for label, params in grid.items():
                folder = merge(f"probe-{method}-{label}", method, adapters, [1.0] * n, work, parameters=params)
                scores[label] = round(probe_score(folder, get_probes()), 6)
                shutil.rmtree(folder, ignore_errors=True)
            cache[key] = scores
            cache_file.write_text(json.dumps(cache, indent=1))
        return cache[key]

    grids = {
        "task_arithmetic": probe_grid("task_arithmetic-grid", "task_arithmetic", {str(lam): {"lambda": lam} for lam in LAMBDAS}),
        "delta_guided raw": probe_grid("delta_guided-grid", "delta_guided",
                                       {str(lam): {"lambda": lam, "normalize": False} for lam in LAMBDAS}),
        "delta_guided": probe_grid("delta_guided-normalized-grid", "delta_guided",
                                   {f"{g}:{lam}": {"gamma": g, "lambda": lam} for g, lam in DG_GRID}),
    }
    best = {k: max(g, key=g.get) for k, g in grids.items()}
    lam = float(best["task_arithmetic"])
    lam_raw = float(best["delta_guided raw"])
    gamma_dg, lam_dg = (float(x) for x in best["delta_guided"].split(":"))
    notes = [f"seed {seed}: {method} grid, mean probe score on validation rows: {grids[method]} → {chosen}"
             for method, chosen in best.items()]

    results.append(("linear (mean of task vectors)", row("linear", lambda: merge("linear", "linear", adapters, [1.0] * n, work))))
    ta = row(f"task_arithmetic:{lam}", lambda: merge("ta", "task_arithmetic", adapters, [1.0] * n, work, parameters={"lambda": lam}))
    results.append(("task_arithmetic (λ from probes)", ta))
    results.append(("ties (density 0.5)", row("ties", lambda: merge("ties", "ties", adapters, [1.0] * n, work, parameters={"density": 0.5}))))
    results.append(("dare_ties (density 0.5)",
                    row("dare_ties", lambda: merge("dare_ties", "dare_ties", adapters, [1.0] * n, work, parameters={"density": 0.5}))))
    results.append(("delta_guided, raw |Δ| (γ=1, λ from probes)",
                    row(f"delta_guided:{lam_raw}", lambda: merge("dg-raw", "delta_guided", adapters, [1.0] * n, work,
                                                                 parameters={"lambda": lam_raw, "normalize": False}))))
    results.append(("delta_guided, |Δ|/RMS per tensor (default; γ, λ from probes)",
                    row(f"delta_guided-normalized:{gamma_dg}:{lam_dg}", lambda: merge(
                        "dg", "delta_guided", adapters, [1.0] * n, work, parameters={"gamma": gamma_dg, "lambda": lam_dg}))))
    for objective in ("task_loss", "distill"):
        label = "self_positioning, task_loss (default)" if objective == "task_loss" else "self_positioning, distill"
        results.append((label, row(f"self_positioning:{lam}:{objective}:tensor", lambda o=objective: merge(
            f"sp-{o}", "self_positioning", adapters, [lam] * n, work,
            tasks=[task_file(t) for t in TASKS], parameters={"objective": o, "seed": seed}))))
    if args.joint:
        jrun = trained_joint(TASKS, args.max_steps or None, seed)
        results.append(("joint multi-task (one adapter, 4 tasks)",
                        row("joint", lambda: merge("joint", "task_arithmetic", [jrun / "adapter"], [1.0], work))))
    notes.append(f"seed {seed}: adapter steps " + ", ".join(f"{t} {metrics[t]['steps']}" for t in TASKS)
                 + "; gains on their own tasks " + ", ".join(f"{t} {tuned[t] - base[t]:+.3f}" for t in TASKS))
    results.append(("each single adapter on its own task", {"scores": tuned}))
    return results, base, tuned, notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-steps", type=int, default=0, help="training steps of every adapter (0: the defaults, 2 epochs)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="adapter training seeds (self_positioning searches with the same seed); mean ± 95 %% CI over them")
    ap.add_argument("--joint", action="store_true", help="add the joint multi-task adapter's row (trains one per seed)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]

    from taskloom.merge.gate import gate

    per_seed = {}
    for seed in args.seeds:
        per_seed[seed] = one_seed(seed, args)
    for seed in args.seeds:
        for note in per_seed[seed][3]:
            print(note)
    labels = [label for label, _r in per_seed[args.seeds[0]][0]]
    heads = {"rt-sentiment": "rt-sentiment (acc)", "chatterbot-qa": "chatterbot-qa (MRR)",
             "lee-similarity": "lee-similarity (Pearson)", "chatterbot-topic": "chatterbot-topic (acc)"}
    n = len(TASKS)
    print(f"\n{len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}): mean ± 95 % CI (Student t over seeds), eval splits\n")
    print("| model | " + " | ".join(heads[t] for t in TASKS) + " | average | gate 90 % (seeds passing) |")
    print("|---|" + "---|" * (n + 2))
    averages = {}
    for label in labels:
        rows = [dict(per_seed[s][0])[label] for s in args.seeds]
        cells = [mean_ci([r["scores"][t] for r in rows]) for t in TASKS]
        avgs = [sum(r["scores"][t] for t in TASKS) / n for r in rows]
        averages[label] = avgs
        if label.startswith(("base", "each single")):
            verdict = "-"
        else:
            passed = [gate(per_seed[s][1], per_seed[s][2], r["scores"], share=0.9)["promote"] for s, r in zip(args.seeds, rows)]
            verdict = f"{sum(passed)} of {len(passed)}"
        print(f"| {label} | " + " | ".join(cells) + f" | {mean_ci(avgs)} | {verdict} |")
    print()
    ta = averages["task_arithmetic (λ from probes)"]
    for label, avgs in averages.items():
        if label.startswith(("self_positioning", "delta_guided")):
            diffs = [a - b for a, b in zip(avgs, ta)]
            wins = sum(d > 0 for d in diffs)
            print(f"{label} − task_arithmetic on the task average: {mean_ci(diffs)} (ahead in {wins} of {len(diffs)} seeds)")
    print(f"wall: {time.perf_counter() - t_start:.0f} s; load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} "
          f"at end, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
