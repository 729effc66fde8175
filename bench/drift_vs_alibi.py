"""taskloom's MMD test vs alibi-detect's MMDDrift (PyTorch backend) on the same window, in one run.

    .venv/bin/python bench/drift_vs_alibi.py [--repeats 5]

One window: n = m = 500 MiniLM embeddings (d = 384) of Rotten Tomatoes reviews, B = 200 permutations,
tested by `taskloom.monitor.mmd.mmd_test` here and by `alibi_detect.cd.MMDDrift(backend="pytorch")`
in a subprocess. alibi-detect needs numpy<2 and transformers<5, so it cannot live in the platform's
environment: it gets its own venv at .cache/bench-alibi/ (created on first run: torch==2.13.0, then
alibi-detect[torch]==0.13.0 from PyPI; a few minutes). The arrays travel as .npy files, the results
come back as JSON. alibi's time is `predict` only (its detector is built once per reference, kernel
bandwidth included); taskloom's is the whole `mmd_test` call (bandwidth included). Both sides run
with the same number of threads (`--threads`, default 1: on a shared 2-core machine two torch
threads stall for seconds whenever another process holds a core, which would flatter taskloom).

Two windows are tested: reviews vs reviews (no drift: p-values should agree within Monte-Carlo
error, sd = sqrt(p(1-p)/B) each) and reviews vs 80 % reviews + 20 % headlines (drift: taskloom's
p-value is 1/(B+1), alibi's is 0, a p-value a permutation test cannot give). The last line is
`ratio: X`, alibi's median time over taskloom's on the no-drift window.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _threads_from_argv(default: int = 1) -> int:
    """--threads must act before numpy loads its BLAS, so it is read here, ahead of argparse."""
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return default


THREADS = _threads_from_argv()
for _k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_k] = str(THREADS)  # both sides, same count (the subprocess inherits it too)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from drift_data import ROOT, load_embeddings  # noqa: E402

VENV = ROOT / ".cache" / "bench-alibi"
PY = VENV / "bin" / "python"
B = 200

RUNNER = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch
from alibi_detect.cd import MMDDrift
ref, cur_paths, b, repeats = np.load(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
torch.manual_seed(0)
cd = MMDDrift(ref, backend="pytorch", p_val=0.05, n_permutations=b)
out = []
for path in cur_paths:
    cur = np.load(path)
    times, preds = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        pred = cd.predict(cur)
        times.append(time.perf_counter() - t)
        preds.append(float(pred["data"]["p_val"]))
    out.append({"times": times, "p_values": preds, "statistic": float(pred["data"]["distance"]),
                "bandwidth": float(cd._detector.kernel.sigma.item())})
print(json.dumps({"torch_threads": torch.get_num_threads(), "windows": out}))
'''


def ensure_venv() -> None:
    """Create .cache/bench-alibi with alibi-detect once (its own numpy<2 world)."""
    if PY.exists() and subprocess.run([str(PY), "-c", "import alibi_detect"], capture_output=True).returncode == 0:
        return
    print(f"creating {VENV} (torch==2.13.0, alibi-detect[torch]==0.13.0; a few minutes)", flush=True)
    subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
    pip = [str(PY), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)  # first, so alibi's torch extra does not pull a CUDA build
    subprocess.run([*pip, "alibi-detect[torch]==0.13.0"], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads on both sides (1: steady on a shared machine)")
    args = ap.parse_args()
    ensure_venv()

    from taskloom.monitor.mmd import mmd_test

    data = load_embeddings()
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(data["reviews"]))
    ref = data["reviews"][idx[:500]].astype(np.float32)
    same = data["reviews"][idx[500:1000]].astype(np.float32)
    drifted = same.copy()
    drifted[:100] = data["headlines"][rng.choice(len(data["headlines"]), 100, replace=False)]
    windows = {"no drift": same, "20 % headlines": drifted}

    def taskloom_round() -> dict:
        res = {}
        for name, cur in windows.items():
            times, pvals = [], []
            for r in range(args.repeats):
                t = time.perf_counter()
                out = mmd_test(ref, cur, permutations=B, seed=r)
                times.append(time.perf_counter() - t)
                pvals.append(out["p_value"])
            res[name] = {"times": times, "p_values": pvals, "statistic": out["statistic"], "bandwidth": out["bandwidth"]}
        return res

    with tempfile.TemporaryDirectory(prefix="bench-alibi-") as tmp:
        np.save(Path(tmp) / "ref.npy", ref)
        paths = []
        for i, cur in enumerate(windows.values()):
            paths.append(str(Path(tmp) / f"cur{i}.npy"))
            np.save(paths[-1], cur)
        ours = [taskloom_round()]  # taskloom, alibi, taskloom: load changes hit both sides alike
        proc = subprocess.run([str(PY), "-c", RUNNER, str(Path(tmp) / "ref.npy"), ",".join(paths), str(B),
                               str(args.repeats), str(THREADS)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
        ours.append(taskloom_round())

    print(f"one window: n = m = 500, d = 384, B = {B}; {args.repeats} repeats per side "
          f"(taskloom twice, around alibi); {os.cpu_count()} CPUs; threads: numpy BLAS {THREADS}, torch {theirs['torch_threads']}\n")
    print("| window | taskloom median s | alibi-detect median s | taskloom p (per seed) | alibi p (per repeat) "
          "| taskloom MMD² | alibi MMD² | bandwidth taskloom / alibi |")
    print("|---|---|---|---|---|---|---|---|")
    ratio = None
    for i, name in enumerate(windows):
        t_times = ours[0][name]["times"] + ours[1][name]["times"]
        t_p = ours[0][name]["p_values"]
        a = theirs["windows"][i]
        tm, am = float(np.median(t_times)), float(np.median(a["times"]))
        if ratio is None:
            ratio = am / tm
        print(f"| {name} | {tm:.4f} | {am:.4f} | {', '.join(f'{p:.3f}' for p in t_p)} | "
              f"{', '.join(f'{p:.3f}' for p in a['p_values'])} | {ours[0][name]['statistic']:.5f} | {a['statistic']:.5f} | "
              f"{ours[0][name]['bandwidth']:.4f} / {a['bandwidth']:.4f} |")
    pt, pa = float(np.mean(ours[0]["no drift"]["p_values"])), float(np.mean(theirs["windows"][0]["p_values"]))
    se = np.sqrt(max(pt, 1 / B) * (1 - pt) / B / args.repeats + max(pa, 1 / B) * (1 - pa) / B / args.repeats)
    print(f"\nno drift: mean p taskloom {pt:.3f}, alibi {pa:.3f}; difference {abs(pt - pa):.3f} = "
          f"{abs(pt - pa) / se:.1f} Monte-Carlo standard errors ({'agree' if abs(pt - pa) <= 3 * se else 'DISAGREE'})")
    print(f"drift: taskloom p = {min(ours[0]['20 % headlines']['p_values']):.4f} (= 1/{B + 1}), "
          f"alibi p = {min(theirs['windows'][1]['p_values']):.4f}")
    print(f"ratio: {ratio:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
