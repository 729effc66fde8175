"""Meta-LoRA on tasks it never saw: the generator against every baseline and control, one run.

    .venv/bin/python bench/metalora.py                      # the quick bank in .cache/bench-metalora
    .venv/bin/python bench/metalora.py --bank runs/metalora --seeds 0 1 2 --shots 16

The bank (`taskloom metalora build --quick` when --bank has no bank.json) gives four tiers: "seen"
(the generator trains on them), "val" (they chose its shape), "near" (new tasks from the bank's
corpora) and "far" (a corpus the bank never sees). Every method is scored with the same head on each
task's eval split: label-description prototypes by the adapted encoder with no examples, a logistic
regression on the same k examples with them; Spearman for similarity. Each ΔW is added to the base
weights in place (one loaded encoder, no PEFT wrapper), so every method costs one forward pass per
eval text.

Description only (k = 0): base; the task's own trained LoRA (the reference); the generator (one
trained per seed, each choosing its shape on the val tasks); the mean seen ΔW; the seen adapter whose
description is nearest; one multi-task adapter trained on every seen task; and the controls, each
seed's generator given another held-out task's description, a random string, an empty string
(averaged over the seeds like the generator itself).
With k examples: base, the trained LoRA, the generator given the examples, a LoRA trained on the k
examples alone, and a LoraHub-style search (weights over the 20 seen adapters nearest by
description, 40 evaluations of a (1+1) evolution strategy on the k examples' prototype loss plus an
L1 term, as LoraHub does with Nevergrad), with the CPU seconds each spends to make its adapter
(the generator's: embedding the description and the k examples, then one generation).

Gap closure of a method on a task = (method − base) / (trained − base), counted only where the trained
LoRA beats base by ≥ 2 points and the eval split has ≥ 200 rows; the generator's value is its mean
over seeds. The paired bootstrap CI (2,000 resamples over tasks) is of the mean difference. Results:
.cache/bench-metalora/results.json; the last line is `gap_closure_near: X` (median over near tasks).
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench-metalora"
MIN_GAIN = 0.02  # the trained LoRA must beat base by 2 points for a task to count in gap closure
MIN_ROWS = 200
HUB_CANDIDATES = 20
HUB_BUDGET = 40
HUB_L1 = 0.05


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- weights ---------------------------------------------------------------------------------------
def dense(delta: dict) -> dict:
    """module → ΔW (out × in, float32 torch) from (s·B, A) factors."""
    import torch

    return {m: torch.as_tensor(b @ a, dtype=torch.float32) for m, (b, a) in delta.items()}


def generated(gen, cond: np.ndarray) -> dict:
    return {m: b @ a for m, (a, b) in gen.factors(cond).items()}


def combine(deltas: list[dict], weights) -> dict:
    out = {m: d.clone() * float(weights[0]) for m, d in deltas[0].items()}
    for d, w in zip(deltas[1:], weights[1:]):
        if w:
            for m in out:
                out[m].add_(d[m], alpha=float(w))
    return out


class Patched:
    """The base encoder whose adapted weights are W₀ + ΔW for the ΔW last applied (None: W₀)."""

    def __init__(self, model, modules: list[str]):
        self.weights = {m: model.get_submodule(m).weight for m in modules}
        self.original = {m: w.detach().clone() for m, w in self.weights.items()}

    def apply(self, delta: dict | None) -> None:
        import torch

        with torch.no_grad():
            for m, w in self.weights.items():
                w.copy_(self.original[m] if delta is None else self.original[m] + delta[m])


# ---- one task ----------------------------------------------------------------------------------------
class Task:
    def __init__(self, bank_dir: Path, entry: dict, k: int, seed: int):
        from taskloom.metalora.generate import pick_shots
        from taskloom.specs import load_task
        from taskloom.tasks.types import TASK_TYPES
        from taskloom.train.evaluate import load_split

        self.entry = entry
        self.name, self.tier = entry["name"], entry["tier"]
        self.spec = load_task(bank_dir / entry["task"] / "task.yaml")
        self.kind = TASK_TYPES[self.spec.type]
        self.eval_rows = load_split(self.spec, "eval")
        self.shots = pick_shots(self.spec, load_split(self.spec, "train"), k, seed) if k else []

    def score(self, tok, model, shots: bool) -> float:
        """The task metric on its eval split, with prototypes (no shots) or a probe on the k shots."""
        from taskloom.metalora.generate import score_with_head

        return float(score_with_head(self.spec, tok, model, self.eval_rows, self.shots if shots else [])["value"])

    def shot_loss(self, tok, model) -> float:
        """LoraHub's objective on the k examples: prototype cross-entropy (labelled) or −Spearman."""
        import torch

        from taskloom.metalora.generate import make_head
        from taskloom.train.evaluate import embed

        if not self.kind.labelled:
            return -float(self.kind.score(lambda t: embed(tok, model, t), self.shots, self.spec, None)["value"])
        head = make_head(self.spec, tok, model, [], 0)
        x = torch.as_tensor(embed(tok, model, [r["text"] for r in self.shots]))
        y = torch.as_tensor([self.spec.labels.index(r["label"]) for r in self.shots])
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(head(x), y))


# ---- baselines that need training --------------------------------------------------------------------
def train_generators(bank_dir: Path, seeds: list[int]) -> dict:
    from taskloom.metalora.generator import load_generator, train_generator

    out = {}
    for s in seeds:
        folder = CACHE / f"generator-s{s}"
        if not (folder / "generator.json").exists():
            start = time.perf_counter()
            train_generator(bank_dir, folder, seed=s, progress=False)
            log(f"generator seed {s}: trained in {time.perf_counter() - start:.0f} s")
        out[s] = load_generator(folder)
    return out


def train_spec_like(bank: dict, max_steps: int | None):
    from taskloom.metalora.build import train_spec

    return train_spec(bool(bank["quick"]), int(bank["seed"]), max_steps)


def multitask_adapter(bank_dir: Path, bank: dict, seen: list[dict]) -> Path:
    """One LoRA on every seen task, with the bank's recipe and the bank's total step budget."""
    from taskloom.specs import load_task
    from taskloom.train.lora import train_tasks

    out = CACHE / "multitask"
    if not (out / "metrics.json").exists():
        steps = bank["train"]["max_steps"] * len(seen) if bank["train"]["max_steps"] else None
        start = time.perf_counter()
        train_tasks([load_task(bank_dir / e["task"] / "task.yaml") for e in seen], out, train_spec_like(bank, steps))
        log(f"multi-task adapter on {len(seen)} seen tasks: {time.perf_counter() - start:.0f} s")
    return out / "adapter"


def shot_lora(bank_dir: Path, bank: dict, task: Task) -> tuple[dict, float]:
    """A LoRA trained on the task's k examples alone (bank recipe); (ΔW, CPU seconds)."""
    import shutil

    from taskloom.data.rows import write_rows
    from taskloom.metalora.generator import read_delta
    from taskloom.specs import load_task
    from taskloom.train.lora import train_tasks

    out = CACHE / "shot-lora" / task.name
    stage = CACHE / "shot-tasks" / task.name
    cpu = 0.0
    if not (out / "metrics.json").exists():
        shutil.rmtree(stage, ignore_errors=True)
        shutil.copytree(bank_dir / task.entry["task"], stage)
        write_rows(stage / "train.jsonl", task.shots)
        start = time.process_time()
        train_tasks([load_task(stage / "task.yaml")], out, train_spec_like(bank, bank["train"]["max_steps"]), progress=False)
        cpu = time.process_time() - start
        (out / "cpu_seconds").write_text(f"{cpu}\n")
    cpu = float((out / "cpu_seconds").read_text()) if (out / "cpu_seconds").exists() else cpu
    return dense(read_delta(out / "adapter")), cpu


def lorahub(task: Task, tok, model, patched: Patched, candidates: list[dict], seed: int) -> tuple[dict, float]:
    """Weights over `candidates` by a (1+1)-ES on the k examples' loss + L1; (ΔW, CPU seconds)."""
    rng = np.random.default_rng(seed)
    start = time.process_time()

    def loss(w: np.ndarray) -> float:
        patched.apply(combine(candidates, w))
        return task.shot_loss(tok, model) + HUB_L1 * float(np.abs(w).sum())

    best = np.zeros(len(candidates))
    best_loss, step = loss(best), 0.3
    for _ in range(HUB_BUDGET - 1):
        trial = np.clip(best + step * rng.standard_normal(len(best)), -1.5, 1.5)
        trial_loss = loss(trial)
        if trial_loss < best_loss:
            best, best_loss, step = trial, trial_loss, step * 1.5
        else:
            step *= 0.9
    delta = combine(candidates, best)
    return delta, time.process_time() - start


# ---- statistics ------------------------------------------------------------------------------------------
def closure(value: float, base: float, trained: float) -> float:
    return (value - base) / (trained - base)


def bootstrap(diffs: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), (n, len(diffs)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt_ci(diffs: np.ndarray) -> str:
    lo, hi = bootstrap(diffs)
    verdict = "excludes 0" if lo > 0 or hi < 0 else "includes 0"
    return f"{diffs.mean() * 100:+.2f} pts [{lo * 100:+.2f}, {hi * 100:+.2f}] ({verdict})"


# ---- the run -------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", type=Path, default=CACHE / "bank", help="an adapter bank (built --quick if absent)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="generator seeds")
    ap.add_argument("--shots", type=int, default=16, help="k for the few-shot comparison")
    ap.add_argument("--only", nargs="*", help="score only these tasks (a quick look; the report needs all)")
    args = ap.parse_args()

    from rich.progress import track

    from taskloom.metalora.build import build_bank
    from taskloom.metalora.generator import adapter_folder, condition, read_delta, shot_mean
    from taskloom.models.encoder import load_encoder
    from taskloom.train.evaluate import embed

    CACHE.mkdir(parents=True, exist_ok=True)
    bank_dir = args.bank.resolve()
    if not (bank_dir / "bank.json").exists():
        build_bank(bank_dir, quick=True)
    bank = json.loads((bank_dir / "bank.json").read_text())
    entries = bank["tasks"]
    seen = [e for e in entries if e["tier"] == "seen"]
    held = [e for e in entries if e["tier"] in ("near", "far")]
    gens = train_generators(bank_dir, args.seeds)
    multi_dir = multitask_adapter(bank_dir, bank, seen)

    tok, model = load_encoder(bank["base"])
    modules = gens[args.seeds[0]].modules
    patched = Patched(model, modules)
    tasks = {e["name"]: Task(bank_dir, e, args.shots if e in held else 0, 0) for e in seen + held}
    desc = {n: embed(tok, model, [t.spec.description])[0] for n, t in tasks.items()}
    rand = random.Random(0)
    rnd = {n: "".join(rand.choice(string.ascii_lowercase + " ") for _ in t.spec.description) for n, t in tasks.items()}
    ctrl = {"random": {n: embed(tok, model, [s])[0] for n, s in rnd.items()}, "empty": embed(tok, model, [""])[0]}
    names = [e["name"] for e in held]
    shuffled = {n: names[(i + 1) % len(names)] for i, n in enumerate(names)}

    seen_delta = {e["name"]: dense(read_delta(adapter_folder(bank_dir, e))) for e in seen}
    seen_names = list(seen_delta)
    mean_delta = combine([seen_delta[n] for n in seen_names], [1 / len(seen_names)] * len(seen_names))
    multi_delta = dense(read_delta(multi_dir))
    seen_desc = np.stack([desc[n] for n in seen_names])

    results: dict[str, dict] = {}
    for e in track([e for e in seen + held if not args.only or e["name"] in args.only], description="scoring", transient=True):
        t = tasks[e["name"]]
        r: dict = {"tier": t.tier, "type": t.spec.type, "eval_rows": len(t.eval_rows)}
        own = seen_delta[t.name] if t.name in seen_delta else dense(read_delta(adapter_folder(bank_dir, e)))
        patched.apply(None)
        r["base"] = t.score(tok, model, False)
        patched.apply(own)
        r["trained"] = t.score(tok, model, False)
        for s, g in gens.items():
            patched.apply(generated(g, condition(desc[t.name], None)))
            r[f"gen_s{s}"] = t.score(tok, model, False)
        if t.tier == "seen":
            results[t.name] = r
            continue
        sims = seen_desc @ desc[t.name]
        order = np.argsort(-sims)
        r["nearest_task"], r["nearest_cosine"] = seen_names[order[0]], float(sims[order[0]])
        for label, delta in (("mean", mean_delta), ("nearest", seen_delta[seen_names[order[0]]]), ("multitask", multi_delta)):
            patched.apply(delta)
            r[label] = t.score(tok, model, False)
        for label, cond in (
            ("shuffled", desc[shuffled[t.name]]),
            ("random", ctrl["random"][t.name]),
            ("empty", ctrl["empty"]),
        ):
            for s, g in gens.items():
                patched.apply(generated(g, condition(cond, None)))
                r[f"{label}_s{s}"] = t.score(tok, model, False)
        # ---- k examples ----
        patched.apply(None)
        r["k_base"] = t.score(tok, model, True)
        patched.apply(own)
        r["k_trained"] = t.score(tok, model, True)
        patched.apply(None)
        # the cost of one k-shot adapter: embed the description and the examples, then one generation
        start = time.process_time()
        x = embed(tok, model, [row[t.kind.main_text] for row in t.shots])
        shot_cond = shot_mean(x, [row["label"] for row in t.shots] if t.kind.labelled else None)
        cond = condition(embed(tok, model, [t.spec.description])[0], shot_cond)
        embed_cpu = time.process_time() - start
        gen_deltas, gen_cpu = {}, []
        for s, g in gens.items():
            start = time.process_time()
            gen_deltas[s] = generated(g, cond)
            gen_cpu.append(time.process_time() - start)
        r["k_gen_cpu_s"] = embed_cpu + float(np.mean(gen_cpu))
        for s, delta in gen_deltas.items():
            patched.apply(delta)
            r[f"k_gen_s{s}"] = t.score(tok, model, True)
        delta, r["k_lora_cpu_s"] = shot_lora(bank_dir, bank, t)
        patched.apply(delta)
        r["k_lora"] = t.score(tok, model, True)
        hub = [seen_delta[seen_names[i]] for i in order[:HUB_CANDIDATES]]
        delta, r["k_hub_cpu_s"] = lorahub(t, tok, model, patched, hub, 0)
        patched.apply(delta)
        r["k_hub"] = t.score(tok, model, True)
        results[t.name] = r
    patched.apply(None)
    (CACHE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report(results, args.seeds)


def report(results: dict, seeds: list[int]) -> None:
    gen_keys = [f"gen_s{s}" for s in seeds]
    for r in results.values():  # every generator row is the mean over the seeds
        for key in ("gen", "shuffled", "random", "empty", "k_gen"):
            if f"{key}_s{seeds[0]}" in r:
                r[key] = float(np.mean([r[f"{key}_s{s}"] for s in seeds]))

    seen = [r for r in results.values() if r["tier"] == "seen"]
    kept = [r["gen"] / r["trained"] for r in seen if r["trained"] > 0]
    per_seed = [np.mean([r[k] / r["trained"] for r in seen if r["trained"] > 0]) for k in gen_keys]
    print(f"seen ({len(seen)} tasks): generator keeps {np.mean(kept) * 100:.1f} % of the trained adapters' metric "
          f"(per seed {', '.join(f'{v * 100:.1f}' for v in per_seed)}; target >= 95 %)")

    print("\nper held-out task (metric x100; gen = mean of seeds; description-only unless k_)")
    cols = ["base", "trained", "gen", "mean", "nearest", "multitask", "shuffled", "random", "empty",
            "k_base", "k_trained", "k_gen", "k_lora", "k_hub"]
    print(f"{'task':38} {'tier':4} {'rows':>4} {'near cos':>8} " + " ".join(f"{c:>9}" for c in cols))
    for name, r in results.items():
        if r["tier"] == "seen":
            continue
        print(f"{name:38} {r['tier']:4} {r['eval_rows']:>4} {r['nearest_cosine']:>8.3f} "
              + " ".join(f"{r[c] * 100:>9.1f}" for c in cols))

    last = None
    for tier in ("near", "far"):
        rows = [r for r in results.values() if r["tier"] == tier]
        big = [r for r in rows if r["eval_rows"] >= MIN_ROWS]
        counted = [r for r in big if r["trained"] - r["base"] >= MIN_GAIN]
        k_counted = [r for r in big if r["k_trained"] - r["k_base"] >= MIN_GAIN]
        print(f"\n{tier}: {len(rows)} tasks, {len(big)} with >= {MIN_ROWS} eval rows, "
              f"{len(counted)} where the trained LoRA gains >= {MIN_GAIN * 100:.0f} points with prototypes, "
              f"{len(k_counted)} with the k-shot probe")
        print(f"  {'method':22} {'median gap closure':>18} {'mean':>8} {'mean metric':>11}")
        med = {}
        for m in ["gen", *gen_keys, "mean", "nearest", "multitask", "shuffled", "random", "empty"]:
            g = np.array([closure(r[m], r["base"], r["trained"]) for r in counted]) if counted else np.array([np.nan])
            med[m] = float(np.median(g))
            print(f"  {m:22} {med[m] * 100:>17.1f}% {np.mean(g) * 100:>7.1f}% {np.mean([r[m] for r in big]) * 100:>11.1f}")
        for m in ["k_gen", "k_lora", "k_hub"]:
            g = np.array([closure(r[m], r["k_base"], r["k_trained"]) for r in k_counted]) if k_counted else np.array([np.nan])
            print(f"  {m + ' (k-shot probe)':22} {np.median(g) * 100:>17.1f}% {np.mean(g) * 100:>7.1f}% "
                  f"{np.mean([r[m] for r in big]) * 100:>11.1f}")
        if big:
            gen = np.array([r["gen"] for r in big])
            for other in ("nearest", "multitask", "mean", "shuffled", "random", "empty"):
                print(f"  generator - {other:10} over {len(big)} tasks: {fmt_ci(gen - np.array([r[other] for r in big]))}")
            kg = np.array([r["k_gen"] for r in big])
            for other in ("k_lora", "k_hub", "k_base"):
                print(f"  k-shot generator - {other:7} over {len(big)} tasks: {fmt_ci(kg - np.array([r[other] for r in big]))}")
            hub_cpu = np.median([r["k_hub_cpu_s"] for r in big])
            gen_cpu = np.median([r["k_gen_cpu_s"] for r in big])
            lora_cpu = np.median([r["k_lora_cpu_s"] for r in big if r["k_lora_cpu_s"] > 0] or [np.nan])
            print(f"  CPU seconds to make the k-shot adapter (median): generator {gen_cpu:.3f}, "
                  f"LoraHub-style search {hub_cpu:.1f} ({hub_cpu / gen_cpu:.0f}x), LoRA on the k examples {lora_cpu:.1f}")
            within = np.mean([r["gen"] >= r["base"] - 0.01 for r in big])
            print(f"  tasks where the generator is no more than 1 point below base: {within * 100:.0f} %")
        small = [r for r in rows if r["eval_rows"] < MIN_ROWS]
        if small:
            print(f"  {len(small)} tasks under {MIN_ROWS} eval rows, reported apart: "
                  + ", ".join(f"gen {r['gen'] * 100:.1f} vs trained {r['trained'] * 100:.1f}" for r in small))
        if tier == "near":
            last = med["gen"]
    print(f"gap_closure_near: {last:.3f}")


if __name__ == "__main__":
    main()
