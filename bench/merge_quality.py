"""Merge quality on the four built-in tasks: each single adapter, each merge method, one table.

    OMP_NUM_THREADS=1 .venv/bin/python bench/merge_quality.py        # --max-steps N for a shorter run

One LoRA adapter per task (`train_adapter` with the library defaults: 2 epochs, r=8, alpha=16,
lr 1e-3, batch 32; or `--max-steps N`), cached in .cache/bench-adapters/.
Every row is a full model written by `taskloom.merge.merge_adapters` and scored with
`taskloom.train.evaluate.evaluate_task` on every task's EVAL split (classification through the head
trained with that task's adapter, copied into the merged model):
- base: the metrics.json `base` of each run (MiniLM; a probe head for classification);
- single <task>: W₀ + Δ of that adapter alone (task_arithmetic, weight 1 for it and 0 for the rest);
- linear (mean of the task vectors); task_arithmetic with λ chosen from a grid by the mean score on
  train-split probe rows (64 per task, seed 0: the rows self_positioning learns on), the fair
  reference for the two methods below; ties and dare_ties (density 0.5, λ = 1);
- delta_guided with raw deviations (γ = 1, λ from the grid) and with deviations normalised per
  tensor (the default; γ and λ chosen together on the same probe rows);
- self_positioning from task_arithmetic's λ with one coefficient per input and tensor, for each
  objective: `task_loss` (the default: the training losses on the probe rows) and `distill` (match
  each adapter's embeddings on its own task's probe texts), each for seeds 0 and 1 (`--sp-seeds`:
  the probe rows and batches differ, which shows how much the result moves);
- joint multi-task: one adapter trained on all four tasks (`taskloom.train.lora.train_tasks`, same
  defaults), written as W₀ + Δ like the single adapters and scored the same way (its heads are under
  adapter/heads/<task>/). The row appears when the trainer offers `train_tasks`.
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


def has_joint_trainer() -> bool:
    from taskloom.train import lora

    return hasattr(lora, "train_tasks")


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
    ap.add_argument("--sp-seeds", type=int, nargs="+", default=[0, 1],
                    help="seeds of self_positioning (probe rows and batches): one row per seed and objective")
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

    # λ (and γ) chosen by the mean probe score on train rows, for task_arithmetic and delta_guided.
    # Cache keys "delta_guided-grid" / "delta_guided:<λ>" hold raw deviations (normalize: false, γ = 1).
    probes = None

    def probe_grid(key: str, method: str, grid: dict[str, dict]) -> dict[str, float]:
        nonlocal probes
        if key not in cache:
            if probes is None:
                probes = load_probes([task_file(t) for t in TASKS],
                                     [SimpleNamespace(task=t, folder=a) for t, a in zip(TASKS, adapters)], PROBE_ROWS, PROBE_SEED)
            scores = {}
            for label, params in grid.items():
                folder = merge(f"probe-{method}-{label}", method, adapters, [1.0] * n, work, parameters=params)
                scores[label] = round(probe_score(folder, probes), 6)
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

    results.append(("linear (mean of task vectors)", row("linear", lambda: merge("linear", "linear", adapters, [1.0] * n, work))))
    ta = row(f"task_arithmetic:{lam}", lambda: merge("ta", "task_arithmetic", adapters, [1.0] * n, work, parameters={"lambda": lam}))
    ta["probe"] = grids["task_arithmetic"][best["task_arithmetic"]]
    results.append((f"task_arithmetic (λ={lam}, from probes)", ta))
    results.append(("ties (density 0.5)", row("ties", lambda: merge("ties", "ties", adapters, [1.0] * n, work, parameters={"density": 0.5}))))
    results.append(("dare_ties (density 0.5)",
                    row("dare_ties", lambda: merge("dare_ties", "dare_ties", adapters, [1.0] * n, work, parameters={"density": 0.5}))))
    raw = row(f"delta_guided:{lam_raw}", lambda: merge("dg-raw", "delta_guided", adapters, [1.0] * n, work,
                                                       parameters={"lambda": lam_raw, "normalize": False}))
    raw["probe"] = grids["delta_guided raw"][best["delta_guided raw"]]
    results.append((f"delta_guided, raw |Δ| (γ=1, λ={lam_raw}, from probes)", raw))
    dg = row(f"delta_guided-normalized:{gamma_dg}:{lam_dg}", lambda: merge(
        "dg", "delta_guided", adapters, [1.0] * n, work, parameters={"gamma": gamma_dg, "lambda": lam_dg}))
    dg["probe"] = grids["delta_guided"][best["delta_guided"]]
    results.append((f"delta_guided, |Δ|/RMS per tensor (γ={gamma_dg:g}, λ={lam_dg}, from probes)", dg))

    def sp_row(objective: str, seed: int) -> dict:
        key = f"self_positioning:{lam}:{objective}:tensor" + (f":seed{seed}" if seed else "")
        name = f"sp-{objective}-{seed}"

        def build() -> Path:
            folder = merge(name, "self_positioning", adapters, [lam] * n, work,
                           tasks=[task_file(t) for t in TASKS], parameters={"objective": objective, "seed": seed})
            nonlocal probes
            if probes is None:
                probes = load_probes([task_file(t) for t in TASKS],
                                     [SimpleNamespace(task=t, folder=a) for t, a in zip(TASKS, adapters)], PROBE_ROWS, PROBE_SEED)
            sp_probe[key] = round(probe_score(folder, probes), 6)
            return folder

        sp_probe: dict[str, float] = {}
        r = row(key, build)
        if key in sp_probe:
            r["probe"] = sp_probe[key]
            r["coefficients"] = json.loads((work / f"{name}.search.json").read_text())
            cache_file.write_text(json.dumps(cache, indent=1))
        return r

    sp = {(obj, seed): sp_row(obj, seed) for obj in ("task_loss", "distill") for seed in args.sp_seeds}
    for (obj, seed), r in sp.items():
        results.append((f"self_positioning, {obj} (λ per input and tensor, seed {seed})", r))
    joint_metrics = None
    if has_joint_trainer():
        jrun = trained_joint(TASKS, args.max_steps or None)
        joint_metrics = json.loads((jrun / "metrics.json").read_text())
        results.append(("joint multi-task (one adapter, 4 tasks)",
                        row("joint", lambda: merge("joint", "task_arithmetic", [jrun / "adapter"], [1.0], work))))

    heads = {"rt-sentiment": "rt-sentiment (acc)", "chatterbot-qa": "chatterbot-qa (MRR)",
             "lee-similarity": "lee-similarity (Pearson)", "chatterbot-topic": "chatterbot-topic (acc)"}
    steps = ", ".join(f"{t} {metrics[t]['steps']}" for t in TASKS)
    print(f"adapters: {'taskloom defaults (2 epochs)' if not args.max_steps else f'{args.max_steps} steps each'}, batch 32, r=8; steps: {steps}")
    print("gains of each adapter on its own task: "
          + ", ".join(f"{t} {tuned[t] - base[t]:+.3f}" for t in TASKS))
    if joint_metrics is None:
        print("joint multi-task training: taskloom.train.lora has no train_tasks; no row")
    else:
        print(f"joint multi-task adapter: {joint_metrics['steps']} steps, {joint_metrics['train_seconds']} s")
    for method, chosen in best.items():
        print(f"{method} grid ({'γ:λ' if method == 'delta_guided' else 'λ'}), mean probe score on train rows: "
              f"{grids[method]} → {chosen}")
    for (obj, seed), r in sp.items():
        if "coefficients" in r:
            print(f"self_positioning {obj} seed {seed}: mean coefficient per input over the tensors (from {lam} each): "
                  + ", ".join(f"{t} {c:.3f}" for t, c in zip(TASKS, r["coefficients"])))
    print()
    print("| model | " + " | ".join(heads[t] for t in TASKS) + " | average | probe avg | gate 90% |")
    print("|---|" + "---|" * (n + 3))
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
        probe = f"{r['probe']:.4f}" if "probe" in r else "-"
        print(f"| {label} | " + " | ".join(f"{s[t]:.4f}" for t in TASKS) + f" | {avg:.4f} | {probe} | {verdict} |")
    print("| (each adapter on its own task, metrics.json) | " + " | ".join(f"{tuned[t]:.4f}" for t in TASKS)
          + f" | {sum(tuned.values()) / n:.4f} | | |")
    print()
    ta_avg = next(v for k, v in averages.items() if k.startswith("task_arithmetic"))
    for label, v in averages.items():
        if label.startswith(("self_positioning", "delta_guided")):
            print(f"{label} vs task_arithmetic (λ={lam}) on the task average: {v:.4f} vs {ta_avg:.4f} "
                  f"({'beats' if v > ta_avg else 'does not beat'} it by {v - ta_avg:+.4f})")
    print(f"wall: {time.perf_counter() - t_start:.0f} s ({t_trained - t_start:.0f} s training/loading adapters); "
          f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
