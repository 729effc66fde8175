"""Merge quality on the four built-in tasks: each single adapter, each merge method, one table.

    OMP_NUM_THREADS=1 .venv/bin/python bench/merge_quality.py        # --max-steps N for a shorter run

One LoRA adapter per task (`train_adapter` with the library defaults: 2 epochs, r=8, alpha=16,
lr 1e-3, batch 32; or `--max-steps N`), cached in .cache/bench-adapters/.
Every row is a full model written by `taskloom.merge.merge_adapters` and scored with
`taskloom.train.evaluate.evaluate_task` on every task's EVAL split (classification through the head
trained with that task's adapter, copied into the merged model):
- base: the metrics.json `base` of each run (MiniLM; a probe head for classification);
- single <task>: W₀ + Δ of that adapter alone (task_arithmetic, weight 1 for it and 0 for the rest);
- linear (mean of the task vectors); task_arithmetic and delta_guided (γ = 1), each with λ chosen
  from a small grid by the mean score on train-split probe rows (64 per task, seed 0, the rows
  self_positioning learns on); ties and dare_ties (density 0.5, λ = 1); self_positioning
  (coefficients learned from task_arithmetic's λ, each task's loss relative to its start).
The last column runs the promotion gate (each task keeps ≥ 90 % of its adapter's gain). Scores are
cached in .cache/bench-adapters/quality-<default|stepsN>.json: a rerun only evaluates what is new.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_adapters import CACHE, task_file, trained  # noqa: E402

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

TASKS = ["rt-sentiment", "chatterbot-qa", "lee-similarity", "chatterbot-topic"]
LAMBDAS = [0.3, 0.5, 0.7, 1.0]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-steps", type=int, default=0, help="training steps of every adapter (0: the defaults, 2 epochs)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]

    from taskloom.merge.gate import gate
    from taskloom.merge.search import load_probes

    runs = {t: trained(t, args.max_steps or None) for t in TASKS}
    metrics = {t: json.loads((runs[t] / "metrics.json").read_text()) for t in TASKS}
    adapters = [runs[t] / "adapter" for t in TASKS]
    base = {t: float(metrics[t]["base"]) for t in TASKS}
    tuned = {t: float(metrics[t]["tuned"]) for t in TASKS}
    t_trained = time.perf_counter()

    tag = f"steps{args.max_steps}" if args.max_steps else "default"
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

    # task_arithmetic and delta_guided: λ from the grid by the mean probe score on train rows
    probes = None
    grids = {}
    for method in ("task_arithmetic", "delta_guided"):
        key = f"{method}-grid"
        if key not in cache:
            if probes is None:
                probes = load_probes([task_file(t) for t in TASKS],
                                     [SimpleNamespace(task=t, folder=a) for t, a in zip(TASKS, adapters)], PROBE_ROWS, PROBE_SEED)
            grid = {}
            for lam in LAMBDAS:
                folder = merge(f"probe-{method}-{lam}", method, adapters, [1.0] * n, work, parameters={"lambda": lam})
                grid[str(lam)] = round(probe_score(folder, probes), 6)
                shutil.rmtree(folder, ignore_errors=True)
            cache[key] = grid
            cache_file.write_text(json.dumps(cache, indent=1))
        grids[method] = cache[key]
    lam = float(max(grids["task_arithmetic"], key=lambda k: grids["task_arithmetic"][k]))
    lam_dg = float(max(grids["delta_guided"], key=lambda k: grids["delta_guided"][k]))

    results.append(("linear (mean of task vectors)", row("linear", lambda: merge("linear", "linear", adapters, [1.0] * n, work))))
    results.append((f"task_arithmetic (λ={lam}, from probes)",
                    row(f"task_arithmetic:{lam}", lambda: merge("ta", "task_arithmetic", adapters, [1.0] * n, work, parameters={"lambda": lam}))))
    results.append(("ties (density 0.5)", row("ties", lambda: merge("ties", "ties", adapters, [1.0] * n, work, parameters={"density": 0.5}))))
    results.append(("dare_ties (density 0.5)",
                    row("dare_ties", lambda: merge("dare_ties", "dare_ties", adapters, [1.0] * n, work, parameters={"density": 0.5}))))
    results.append((f"delta_guided (γ=1, λ={lam_dg}, from probes)", row(f"delta_guided:{lam_dg}", lambda: merge(
        "dg", "delta_guided", adapters, [1.0] * n, work, parameters={"lambda": lam_dg}))))
    sp_key = f"self_positioning:{lam}:relative-losses"
    sp = row(sp_key, lambda: merge("sp", "self_positioning", adapters, [lam] * n, work, tasks=[task_file(t) for t in TASKS]))
    if "coefficients" not in sp:
        sp["coefficients"] = json.loads((work / "sp.search.json").read_text())
        cache_file.write_text(json.dumps(cache, indent=1))
    results.append(("self_positioning (λᵢ learned)", sp))

    heads = {"rt-sentiment": "rt-sentiment (acc)", "chatterbot-qa": "chatterbot-qa (MRR)",
             "lee-similarity": "lee-similarity (Pearson)", "chatterbot-topic": "chatterbot-topic (acc)"}
    steps = ", ".join(f"{t} {metrics[t]['steps']}" for t in TASKS)
    print(f"adapters: {'taskloom defaults (2 epochs)' if not args.max_steps else f'{args.max_steps} steps each'}, batch 32, r=8; steps: {steps}")
    print(f"gains of each adapter on its own task: "
          + ", ".join(f"{t} {tuned[t] - base[t]:+.3f}" for t in TASKS))
    print("joint multi-task training: not offered by taskloom.train (train_adapter trains one task); no row")
    for method, chosen in (("task_arithmetic", lam), ("delta_guided", lam_dg)):
        print(f"{method} λ grid, mean probe score on train rows: {grids[method]} → λ = {chosen}")
    print(f"self_positioning coefficients (from {lam} each): "
          + ", ".join(f"{t} {c:.3f}" for t, c in zip(TASKS, sp["coefficients"])))
    print()
    print("| model | " + " | ".join(heads[t] for t in TASKS) + " | average | gate 90% |")
    print("|---|" + "---|" * (n + 2))
    averages = {}
    for label, r in results:
        s = r["scores"]
        avg = sum(s[t] for t in TASKS) / n
        averages[label] = avg
        if label.startswith("base"):
            verdict = "-"
        else:
            g = gate(base, tuned, s, share=0.9)
            verdict = "pass" if g["promote"] else "fail: " + ", ".join(g["failed"])
        print(f"| {label} | " + " | ".join(f"{s[t]:.4f}" for t in TASKS) + f" | {avg:.4f} | {verdict} |")
    print(f"| (each adapter on its own task, metrics.json) | " + " | ".join(f"{tuned[t]:.4f}" for t in TASKS)
          + f" | {sum(tuned.values()) / n:.4f} | |")
    print()
    ta = next(v for k, v in averages.items() if k.startswith("task_arithmetic"))
    for name in ("self_positioning", "delta_guided"):
        v = next(v for k, v in averages.items() if k.startswith(name))
        print(f"{name} vs task_arithmetic on the task average: {v:.4f} vs {ta:.4f} "
              f"({'beats' if v > ta else 'does not beat'} it by {v - ta:+.4f})")
    print(f"wall: {time.perf_counter() - t_start:.0f} s ({t_trained - t_start:.0f} s training/loading adapters); "
          f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
