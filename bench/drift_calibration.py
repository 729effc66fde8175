"""Are taskloom's drift tests honest? False-alarm rate without drift, power with 20 % foreign text.

    .venv/bin/python bench/drift_calibration.py [--windows 200] [--power-windows 100] [--size 500]

Data: 6,000 Rotten Tomatoes reviews and 1,500 Guardian headlines (2020), embedded once with MiniLM
(cached in .cache/bench-drift/). A predicted label for the chi-squared test comes from a logistic
regression (fresh/rotten) fitted on 1,000 reviews that no window uses.

- Calibration: `--windows` windows without drift, each a reference and a current sample of `--size`
  reviews drawn without overlap from the same 5,000. At alpha = 0.05 each detector should flag about
  5 %: the table shows the rate, its Clopper-Pearson 95 % interval, and whether it lies in the
  central 95 % range of Binomial(windows, 0.05).
- Policy: the MMD p-values and effect sizes of those windows, dealt to 4 tasks as consecutive
  windows, go through the default alarm policy (BH across tasks, 2 hits in a row, the detector's
  minimum effect, cooldown 3): how many retrains would have started for nothing.
- Power: `--power-windows` windows whose current sample has 20 % of its rows replaced by headlines.
  Target: MMD detects >= 80 %. And a label shift the chi-squared test is for: current samples with
  80 % fresh reviews (the pool has 58 %), tested by chi2 on predicted labels and by MMD.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, "1")  # one thread: steady on a shared machine (multi-threaded LAPACK stalls there)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from drift_data import load_embeddings  # noqa: E402

ALPHA = 0.05
TASKS = 4


def run_detectors(names, ref, cur, ref_labels, cur_labels, seed, permutations):
    from taskloom.monitor.detectors import DETECTORS

    out = {}
    for name in names:
        det = DETECTORS[name]
        a, b = (ref_labels, cur_labels) if det.inputs == "labels" else (ref, cur)
        r = det(a, b, permutations=permutations, seed=seed)
        out[name] = (r["p_value"], r["effect"])
    return out


def windows(pool, size, n, rng, foreign=None, share=0.0):
    """Index pairs (reference, current) into `pool`; with `foreign`, the current sample's first rows replaced."""
    for _ in range(n):
        idx = rng.permutation(pool)
        ref, cur = idx[:size], idx[size:2 * size]
        k = round(share * size)
        yield ref, cur, (rng.choice(foreign, k, replace=False) if k else np.array([], dtype=int))


def policy_false_retrains(results, min_effect):
    """Deal the no-drift windows to TASKS tasks as consecutive windows; count the alarms the policy raises."""
    from taskloom.monitor.policy import AlarmPolicy, AlarmTracker

    tracker = AlarmTracker(AlarmPolicy(alpha=ALPHA, consecutive=2, min_effect=min_effect, cooldown=3))
    per_task = len(results) // TASKS
    alarms = 0
    for w in range(per_task):
        step = {f"task{t}": {"p_value": results[t * per_task + w][0], "effect": results[t * per_task + w][1],
                             "adapter_id": "a"} for t in range(TASKS)}
        alarms += len(tracker.step(1_700_000_100.0 + 300 * w, step)[1])
    return alarms, per_task * TASKS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--power-windows", type=int, default=100)
    ap.add_argument("--size", type=int, default=500)
    ap.add_argument("--permutations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from scipy.stats import binom, binomtest
    from sklearn.linear_model import LogisticRegression

    from taskloom.monitor.detectors import DETECTORS

    t0 = time.perf_counter()
    data = load_embeddings()
    reviews, labels, headlines = data["reviews"], data["review_labels"], data["headlines"]
    print(f"embeddings: {len(reviews)} reviews, {len(headlines)} headlines ({time.perf_counter() - t0:.1f} s)")
    probe = LogisticRegression(C=10.0, max_iter=2000).fit(reviews[5000:], labels[5000:])
    pred = np.concatenate([probe.predict(reviews), probe.predict(headlines)])
    print(f"label probe accuracy on the window pool: {float(np.mean(pred[:5000] == labels[:5000])):.3f}")
    all_emb = np.concatenate([reviews, headlines])
    pool, foreign = np.arange(5000), len(reviews) + np.arange(len(headlines))
    names = list(DETECTORS)
    rng = np.random.default_rng(args.seed)

    def measure(n, share):
        res = {name: [] for name in names}
        for i, (r, c, f) in enumerate(windows(pool, args.size, n, rng, foreign, share)):
            cur = np.concatenate([f, c[len(f):]])
            out = run_detectors(names, all_emb[r], all_emb[cur], pred[r], pred[cur], seed=i, permutations=args.permutations)
            for name in names:
                res[name].append(out[name])
        return res

    t1 = time.perf_counter()
    null = measure(args.windows, 0.0)
    t_null = time.perf_counter() - t1
    t1 = time.perf_counter()
    drift = measure(args.power_windows, 0.2)
    t_drift = time.perf_counter() - t1
    fresh, rotten = pool[labels[pool] == "fresh"], pool[labels[pool] == "rotten"]
    prior = {"chi2": [], "mmd": []}
    for i in range(args.power_windows):
        ref = rng.choice(pool, args.size, replace=False)
        rest_f, rest_r = np.setdiff1d(fresh, ref), np.setdiff1d(rotten, ref)
        k = round(0.80 * args.size)
        cur = np.concatenate([rng.choice(rest_f, k, replace=False), rng.choice(rest_r, args.size - k, replace=False)])
        out = run_detectors(list(prior), all_emb[ref], all_emb[cur], pred[ref], pred[cur], seed=i,
                            permutations=args.permutations)
        for name in prior:
            prior[name].append(out[name])

    n = args.windows
    lo, hi = binom.ppf(0.025, n, ALPHA) / n, binom.ppf(0.975, n, ALPHA) / n
    print(f"\nno drift: {n} windows of {args.size} vs {args.size} reviews ({t_null:.0f} s); "
          f"20 % headlines: {args.power_windows} windows ({t_drift:.0f} s); alpha = {ALPHA}, B = {args.permutations}\n")
    print(f"| detector | false-alarm rate | 95 % CI (Clopper-Pearson) | in Binomial({n}, 0.05) 95 % range "
          f"[{lo:.3f}, {hi:.3f}] | mean p (no drift) | power (20 % headlines) | effect no drift / drift (median) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        p0 = np.array([p for p, _ in null[name]])
        e0 = np.array([e for _, e in null[name]])
        p1 = np.array([p for p, _ in drift[name]])
        e1 = np.array([e for _, e in drift[name]])
        k = int(np.sum(p0 < ALPHA))
        ci = binomtest(k, n, ALPHA).proportion_ci(0.95)
        ok = "yes" if lo <= k / n <= hi else "NO"
        print(f"| {name} | {k / n:.3f} ({k}/{n}) | [{ci.low:.3f}, {ci.high:.3f}] | {ok} | {p0.mean():.3f} | "
              f"{np.mean(p1 < ALPHA):.2f} | {np.median(e0):.3f} / {np.median(e1):.3f} |")

    print("\nalarm policy (BH across tasks, 2 hits in a row, cooldown 3) on the no-drift MMD windows, "
          f"dealt to {TASKS} tasks:\n")
    print("| min effect | false retrains | task-windows | false-retrain rate per task-window | 95 % CI (Clopper-Pearson) |")
    print("|---|---|---|---|---|")
    for me in (0.0, DETECTORS["mmd"].min_effect):
        alarms, total = policy_false_retrains(null["mmd"], me)
        ci = binomtest(alarms, total).proportion_ci(0.95)
        print(f"| {me:g}{' (default)' if me else ''} | {alarms} | {total} | {alarms / total:.4f} | "
              f"[{ci.low:.4f}, {ci.high:.4f}] |")
    share = float(np.mean(labels[pool] == "fresh"))
    print(f"\nlabel shift (current 80 % fresh, pool {share:.0%} fresh), {args.power_windows} windows: power "
          + ", ".join(f"{n} {np.mean([p < ALPHA for p, _ in prior[n]]):.2f}" for n in prior)
          + "; median effect " + ", ".join(f"{n} {np.median([e for _, e in prior[n]]):.3f}" for n in prior))
    caught, total = policy_false_retrains(drift["mmd"], DETECTORS["mmd"].min_effect)
    print(f"\nunder 20 % drift the same policy raises {caught} alarm(s) in {total} task-windows "
          f"({total // TASKS} windows per task: an alarm at the 2nd window, then one per 2 + cooldown 3 windows)")
    power = float(np.mean([p < ALPHA for p, _ in drift["mmd"]]))
    print(f"\nMMD power at 20 % contamination: {power:.2f} (target >= 0.8: {'met' if power >= 0.8 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
