"""Training quality on the built-in tasks: options chosen on the validation split, reported on eval over seeds.

    OMP_NUM_THREADS=2 .venv/bin/python bench/train_quality.py --out /tmp/tq            # defaults, seeds 0 1 2
    OMP_NUM_THREADS=2 .venv/bin/python bench/train_quality.py --out /tmp/tq \
        --variants lr=5e-4 lr=2e-3 targets=attention pair=cosent                     # each default vs validation
    .venv/bin/python bench/train_quality.py --only chatterbot-gen                      # one row

Each run is `taskloom train <task.yaml>` with the library defaults (encoder: 2 epochs, r 8, alpha 16,
lr 1e-3, batch 32, 64 tokens; SmolLM2 generation: lr 2e-3, 96 tokens, bf16 autocast on this CPU,
which has AVX512-BF16) and the seed given, run in this process. Each adapter is scored on the task's
validation split (`taskloom eval --split validation`) and on its eval split (the trainer's
metrics.json). Each variant changes one default (the learning rate, the layers LoRA wraps, the pair
objective); each default is kept or changed by the mean validation gain over the tasks it touches
(seeds common to every candidate), never by eval. Eval is reported as mean ± 95 % CI (Student t over
seeds) beside it.
The joint row trains ONE adapter on the four encoder tasks (temperature 2, one task per step) for as
many steps as the four single runs together. Each run's result is kept under --out, so a rerun with
more seeds or learning rates trains only what is new. The issue's targets are printed beside each
row: rt-sentiment ≥ 0.80 accuracy, chatterbot-qa MRR above the base, lee-similarity not below the
base, the SmolLM2 generation task's held-out answer loss down ≥ 25 %.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

ENCODER_TASKS = ["rt-sentiment", "chatterbot-topic", "chatterbot-qa", "lee-similarity"]
TARGETS = {
    "rt-sentiment": ("tuned >= 0.80", lambda m: m["tuned"] >= 0.80),
    "chatterbot-qa": ("tuned > base", lambda m: m["tuned"] > m["base"]),
    "lee-similarity": ("tuned >= base", lambda m: m["tuned"] >= m["base"]),
    "chatterbot-gen": ("answer loss -25 %", lambda m: m["drop"] >= 0.25),
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t, two-sided 95 %, by degrees of freedom


def mean_ci(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % CI over seeds); 0 half-width for one value."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return m, 0.0
    return m, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def fmt(values: list[float]) -> str:
    m, h = mean_ci(values)
    return f"{m:.4f} ± {h:.4f}" if len(values) > 1 else f"{m:.4f}"


ATTENTION_ONLY = r".*encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)"
DIMENSIONS = {"lr": "the learning rate", "targets": "the layers LoRA wraps", "pair": "the pair_similarity objective"}


def parse_variant(text: str) -> tuple[str, str] | None:
    """'default' → None; 'lr=5e-4', 'targets=attention', 'pair=cosent' → (dimension, value)."""
    if text == "default":
        return None
    dim, _, value = text.partition("=")
    ok = {"lr": lambda v: float(v) > 0, "targets": lambda v: v in ("attention", "all"),
          "pair": lambda v: v in ("cosine_mse", "cosent")}
    try:
        if dim in ok and ok[dim](value):
            return dim, value
    except ValueError:
        pass
    raise SystemExit(f"--variants {text!r}: use default, lr=X, targets=attention|all or pair=cosine_mse|cosent")


def applies(variant: tuple[str, str] | None, row: str) -> bool:
    """Whether the variant changes this row's training (the pair objective only touches pair tasks)."""
    return variant is None or variant[0] != "pair" or row in ("lee-similarity", "joint")


def run_one(row: str, files: dict[str, Path], variant: str, seed: int, steps: int | None, work: Path) -> dict:
    """Train one row with one variant of the defaults and one seed (or read its kept result); per task:
    base/tuned on eval and on validation."""
    from taskloom.specs import TrainSpec, load_task
    from taskloom.tasks import types
    from taskloom.train import lora
    from taskloom.train.evaluate import evaluate_task

    folder = work / "runs" / f"{row}-{variant}-seed{seed}"
    kept = folder / "result.json"
    if kept.exists():
        return json.loads(kept.read_text())
    change = parse_variant(variant)
    tasks = [load_task(files[t]) for t in (ENCODER_TASKS if row == "joint" else [row])]
    lr = float(change[1]) if change and change[0] == "lr" else None
    spec = TrainSpec(max_steps=steps, lr=lr, seed=seed, precision="bf16" if row == "chatterbot-gen" else "auto")
    saved = lora.TARGET_MODULES, types.PAIR_OBJECTIVE
    if change and change[0] == "targets" and change[1] == "attention":
        lora.TARGET_MODULES = ATTENTION_ONLY
    if change and change[0] == "pair":
        types.PAIR_OBJECTIVE = change[1]
    try:
        t0 = time.perf_counter()
        m = lora.train_tasks(tasks, folder / "train", spec, progress=sys.stderr.isatty())
        wall = time.perf_counter() - t0
    finally:
        lora.TARGET_MODULES, types.PAIR_OBJECTIVE = saved
    per_task = m["tasks"] if row == "joint" else {row: m}
    result = {"row": row, "variant": variant, "seed": seed, "steps": m["steps"], "train_s": m["train_seconds"],
              "wall_s": wall, "tokens_per_s": m["tokens_per_s"], "tasks": {}}
    for task in tasks:
        t = per_task[task.name]
        val_base = evaluate_task(task, split="validation")["value"]
        val_tuned = evaluate_task(task, adapter=folder / "train" / "adapter", split="validation")["value"]
        sign = -1 if t.get("higher_is_better") is False else 1
        result["tasks"][task.name] = {
            "metric": t["metric"], "base": t["base"], "tuned": t["tuned"], "gain": t["gain"],
            "drop": t.get("drop", 0.0), "val_base": val_base, "val_tuned": val_tuned,
            "val_gain": sign * (val_tuned - val_base),
        }
    kept.write_text(json.dumps(result, indent=1))
    return result


def choose(results: list[dict], variants: list[str]) -> None:
    """Per dimension: the default against each variant on the mean validation gain over the tasks the
    variant changes (encoder rows, seeds every candidate has); eval plays no part."""
    for dim, what in DIMENSIONS.items():
        cands = ["default", *[v for v in variants if (parse_variant(v) or ("", ""))[0] == dim]]
        if len(cands) < 2:
            continue
        rows = [r for r in ENCODER_TASKS if all(applies(parse_variant(v), r) for v in cands)]
        seeds = set.intersection(*({r["seed"] for r in results if r["variant"] == v} for v in cands))
        score = {}
        for v in cands:
            gains = [t["val_gain"] for r in results
                     if r["variant"] == v and r["row"] in rows and r["seed"] in seeds for t in r["tasks"].values()]
            score[v] = statistics.fmean(gains)
        best = max(score, key=lambda v: score[v])
        shown = ", ".join(f"{v} {score[v]:+.4f}" for v in cands)
        print(f"{what}: mean validation gain over {', '.join(rows)} (seeds {sorted(seeds)}): {shown}"
              f" -> chosen on validation: {best}{' (the library default)' if best == 'default' else ''}")


def main() -> int:
    from taskloom.tasks.catalog import export_task

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="run only these rows (task names or 'joint')")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    ap.add_argument("--variants", nargs="+", default=["default"],
                    help="default and changes of one default each, compared on validation: lr=5e-4, "
                         "targets=attention (attention projections only), pair=cosent")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    args = ap.parse_args()
    variants = list(dict.fromkeys(["default", *args.variants]))
    for v in variants:
        parse_variant(v)
    rows = [*ENCODER_TASKS, "chatterbot-gen", "joint"]
    rows = [r for r in rows if (not args.only and r != "joint") or (args.only and r in args.only)]
    work = args.out or Path(tempfile.mkdtemp(prefix="train-quality-"))
    files = {t: export_task(t, work / "tasks" / t) for t in [*ENCODER_TASKS, "chatterbot-gen"]}
    results = []
    for variant in variants:
        for seed in args.seeds:
            steps = 0
            for row in rows:
                if not applies(parse_variant(variant), row) or (variant != "default" and row == "chatterbot-gen"):
                    continue
                r = run_one(row, files, variant, seed, steps if row == "joint" and steps else None, work)
                steps += r["steps"] if row in ENCODER_TASKS else 0
                results.append(r)

    print(f"\n{'row':<9} {'task':<17} {'variant':<17} {'seeds':>5} {'metric':<12} {'validation base → tuned':<33} "
          f"{'eval base':>9} {'eval tuned (mean ± 95 % CI)':<28} {'steps':>5} {'train s':>7}  target")
    for variant in variants:
        for row in rows:
            runs = [r for r in results if r["row"] == row and r["variant"] == variant]
            if not runs:
                continue
            for task in runs[0]["tasks"]:
                ts = [r["tasks"][task] for r in runs]
                target, ok = TARGETS.get(task, ("", None)) if row != "joint" else ("", None)
                verdict = f"{target}: met in {sum(ok(t) for t in ts)} of {len(ts)} seeds" if ok else ""
                print(f"{row if row != task else 'single':<9} {task:<17} {variant:<17} {len(ts):>5} "
                      f"{ts[0]['metric']:<12} {ts[0]['val_base']:.4f} → {fmt([t['val_tuned'] for t in ts]):<24} "
                      f"{ts[0]['base']:>9.4f} {fmt([t['tuned'] for t in ts]):<28} {runs[0]['steps']:>5} "
                      f"{statistics.fmean(r['train_s'] for r in runs):>7.1f}  {verdict}")
    choose(results, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
