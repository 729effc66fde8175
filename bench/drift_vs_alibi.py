"""taskloom's MMD test vs a vectorised float32 torch MMD and alibi-detect's MMDDrift, in one run.

    .venv/bin/python bench/drift_vs_alibi.py [--repeats 5] [--threads 1]

One window: n = m = 500 MiniLM embeddings (d = 384) of Rotten Tomatoes reviews, B = 200 permutations.

- Anchor (written here, `anchor_mmd`): the same test in plain float32 torch: pooled distances by one
  matrix product, the same median heuristic, K = exp(-d²/2σ²), and all B permuted statistics from
  K @ A, A the N × B matrix of 0/1 indicator vectors built from taskloom's permutation index matrix
  (`permutation_indices`, same seed): the same permutations on both sides. taskloom
  (`mmd_test`, float32 default) and the anchor run interleaved (A B A B ...) in this process, same
  torch threads, OMP_WAIT_POLICY=PASSIVE. Their p-values are compared window by window, and with
  taskloom's float64 path. The machine's fp32 matmul GFLOP/s at the test's two product shapes
  (N × d by d × N, N × N by N × B) is measured in the same run, before and after.
- alibi-detect: `MMDDrift(backend="pytorch")` in its own venv at .cache/bench-alibi/ (it needs
  numpy<2 and transformers<5; created on first run: torch==2.13.0, then alibi-detect[torch]==0.13.0),
  run in a subprocess between two taskloom rounds. alibi's time is `predict` only (its detector is
  built once per reference, bandwidth included); taskloom's is the whole `mmd_test` call.

Two windows: reviews vs reviews (no drift) and reviews vs 80 % reviews + 20 % headlines (drift:
taskloom's p-value is 1/(B+1), alibi's is 0, a p-value a permutation test cannot give). Threads:
`--threads` (default 1: on a shared 2-core machine two threads stall whenever another process holds
a core). The last line is `ratio: X`, the anchor's median time over taskloom's (>= 1: not slower).
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
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # all sides: no spinning threads between products
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


def anchor_mmd(x, y, permutations: int, seed: int) -> dict:
    """The anchor: float32 torch, every permuted statistic from one product K @ A."""
    import torch

    from taskloom.monitor.mmd import permutation_indices

    n, m = len(x), len(y)
    z = torch.cat([torch.from_numpy(x), torch.from_numpy(y)]).float()
    n_total = n + m
    sq = (z * z).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (z @ z.T)).clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    # median of the distinct pairs' d²: every pair twice off the diagonal, so the lower median of
    # the off-diagonal entries is the lower middle pair; the upper middle is the next value up
    off = d2.view(-1)[1:].view(n_total - 1, n_total + 1)[:, :-1]
    pairs = n_total * (n_total - 1) // 2
    lo = off.median()
    if pairs % 2:
        med = lo
    else:
        hi = lo if int((off <= lo).sum()) >= pairs + 2 else off[off > lo].min()
        med = (lo + hi) / 2
    sigma2 = med / 2.0
    k = torch.exp(-d2 / (2.0 * sigma2))
    perms = torch.from_numpy(permutation_indices(n_total, permutations, seed))
    observed = torch.zeros(n_total, 1)
    observed[:n] = 1.0
    a = torch.cat([observed, torch.zeros(n_total, permutations).scatter_(0, perms[:, :n].T.contiguous(), 1.0)], dim=1)
    ka = k @ a
    xx = (a * ka).sum(dim=0)
    row = k.sum(dim=1)
    diag = torch.diagonal(k)
    xr, xd = row @ a, diag @ a
    s_xx, s_yy, s_xy = xx - xd, row.sum() - 2.0 * xr + xx - (diag.sum() - xd), xr - xx
    stats = s_xx / (n * (n - 1)) + s_yy / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    exceed = int((stats[1:] >= stats[0]).sum())
    return {"statistic": float(stats[0]), "p_value": (1 + exceed) / (1 + permutations),
            "bandwidth": float(sigma2.sqrt())}


def matmul_gflops(n_total: int, d: int, b: int, repeats: int = 20) -> dict:
    """The machine's fp32 matmul rate (torch, same threads) at the test's two product shapes."""
    import torch

    out = {}
    for name, (p, q, r) in {"N×d·d×N": (n_total, d, n_total), "N×N·N×B": (n_total, n_total, b)}.items():
        u, v = torch.rand(p, q), torch.rand(q, r)
        u @ v
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            u @ v
            times.append(time.perf_counter() - t)
        out[name] = 2.0 * p * q * r / min(times) / 1e9
    return out


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
    ap.add_argument("--threads", type=int, default=1, help="BLAS / torch threads on all sides (1: steady on a shared machine)")
    args = ap.parse_args()
    ensure_venv()

    import torch

    from taskloom.monitor.mmd import mmd_test

    torch.set_num_threads(THREADS)
    data = load_embeddings()
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(data["reviews"]))
    ref = data["reviews"][idx[:500]].astype(np.float32)
    same = data["reviews"][idx[500:1000]].astype(np.float32)
    drifted = same.copy()
    drifted[:100] = data["headlines"][rng.choice(len(data["headlines"]), 100, replace=False)]
    windows = {"no drift": same, "20 % headlines": drifted}
    n_total, d = len(ref) + len(same), ref.shape[1]
    flops = 2.0 * n_total * n_total * d + 2.0 * n_total * n_total * B  # the two products of one test

    peak_before = matmul_gflops(n_total, d, B)

    def paired_round(res: dict) -> None:
        """taskloom, anchor, taskloom, anchor ...: per window and seed, both sides back to back."""
        for name, cur in windows.items():
            for r in range(args.repeats):
                for side, fn in (("taskloom", mmd_test), ("anchor", anchor_mmd)):
                    t = time.perf_counter()
                    out = fn(ref, cur, permutations=B, seed=r)
                    res[side][name]["times"].append(time.perf_counter() - t)
                    res[side][name]["p_values"].append(out["p_value"])
                    res[side][name]["statistic"], res[side][name]["bandwidth"] = out["statistic"], out["bandwidth"]

    ours = {side: {name: {"times": [], "p_values": []} for name in windows} for side in ("taskloom", "anchor")}
    with tempfile.TemporaryDirectory(prefix="bench-alibi-") as tmp:
        np.save(Path(tmp) / "ref.npy", ref)
        paths = []
        for i, cur in enumerate(windows.values()):
            paths.append(str(Path(tmp) / f"cur{i}.npy"))
            np.save(paths[-1], cur)
        paired_round(ours)  # taskloom + anchor, alibi, taskloom + anchor: load changes hit all alike
        proc = subprocess.run([str(PY), "-c", RUNNER, str(Path(tmp) / "ref.npy"), ",".join(paths), str(B),
                               str(args.repeats), str(THREADS)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
        paired_round(ours)
    peak_after = matmul_gflops(n_total, d, B)
    exact = {name: [mmd_test(ref, cur, permutations=B, seed=r, precision="float64")["p_value"]
                    for r in range(args.repeats)] for name, cur in windows.items()}

    load = os.getloadavg()
    print(f"one window: n = m = 500, d = {d}, B = {B}; {args.repeats} seeds per window, taskloom and anchor "
          f"interleaved, twice (around alibi); {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; threads: torch {torch.get_num_threads()} (alibi's {theirs['torch_threads']}), "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
    print("fp32 matmul peak (torch, best of 20), before / after: " + "; ".join(
        f"{k} {peak_before[k]:.1f} / {peak_after[k]:.1f} GFLOP/s" for k in peak_before) + "\n")
    print("| window | taskloom float32 median s | anchor float32 median s | alibi-detect median s | "
          "taskloom GFLOP/s | anchor GFLOP/s | taskloom p equal to anchor's / to its float64 path's | taskloom p (per seed) "
          "| alibi p (per repeat) | MMD² taskloom / anchor / alibi |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    med = {}
    for i, name in enumerate(windows):
        t, an, al = ours["taskloom"][name], ours["anchor"][name], theirs["windows"][i]
        tm, anm, alm = float(np.median(t["times"])), float(np.median(an["times"])), float(np.median(al["times"]))
        med[name] = (tm, anm, alm)
        half = len(t["p_values"]) // 2
        same_pa = sum(a == b for a, b in zip(t["p_values"], an["p_values"]))
        same_64 = sum(a == b for a, b in zip(t["p_values"][:half], exact[name]))
        apart = max(round(abs(a - b) * (B + 1)) for a, b in zip(t["p_values"], an["p_values"]))
        print(f"| {name} | {tm:.4f} | {anm:.4f} | {alm:.4f} | {flops / tm / 1e9:.1f} | {flops / anm / 1e9:.1f} | "
              f"{same_pa}/{len(t['p_values'])} anchor (at most {apart} count apart), {same_64}/{half} float64 | "
              f"{', '.join(f'{p:.3f}' for p in t['p_values'][:half])} | {', '.join(f'{p:.3f}' for p in al['p_values'])} | "
              f"{t['statistic']:.5f} / {an['statistic']:.5f} / {al['statistic']:.5f} |")
    pt, pa = float(np.mean(ours["taskloom"]["no drift"]["p_values"])), float(np.mean(theirs["windows"][0]["p_values"]))
    reps = len(ours["taskloom"]["no drift"]["p_values"])
    se = np.sqrt(max(pt, 1 / B) * (1 - pt) / B / reps + max(pa, 1 / B) * (1 - pa) / B / args.repeats)
    print(f"\nno drift: mean p taskloom {pt:.3f}, alibi {pa:.3f}; difference {abs(pt - pa):.3f} = "
          f"{abs(pt - pa) / se:.1f} Monte-Carlo standard errors ({'agree' if abs(pt - pa) <= 3 * se else 'DISAGREE'})")
    print(f"drift: taskloom p = {min(ours['taskloom']['20 % headlines']['p_values']):.4f} (= 1/{B + 1}), "
          f"alibi p = {min(theirs['windows'][1]['p_values']):.4f}")
    tm, anm, alm = med["no drift"]
    print(f"alibi-detect ratio (alibi time / taskloom time, no-drift window): {alm / tm:.1f}")
    both_t = float(np.median(ours["taskloom"]["no drift"]["times"] + ours["taskloom"]["20 % headlines"]["times"]))
    both_a = float(np.median(ours["anchor"]["no drift"]["times"] + ours["anchor"]["20 % headlines"]["times"]))
    print(f"ratio: {both_a / both_t:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
