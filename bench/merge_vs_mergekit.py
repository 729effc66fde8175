"""TIES merge of two full fine-tunes of a Llama model: taskloom vs mergekit, same inputs, same run.

    .venv/bin/python bench/merge_vs_mergekit.py            # add --repeats 3 on a busy machine

Models are made here, nothing is downloaded: a random `LlamaConfig` model (hidden 1024, 8 layers,
vocab 32000: 169M parameters, 676 MB in float32) saved with `save_pretrained` as the base, and two
"fine-tunes" = base + seeded random perturbations (a few % of each tensor's spread), all in
.cache/bench-merge/ (made once, reused). mergekit (LGPL-3.0, a benchmark baseline only, never a
taskloom dependency) gets its own venv in .cache/bench-mergekit/ on first run.

Both merges are `ties`, density 0.5, weight 0.5 each, float32: mergekit by `mergekit-yaml config.yml
out/` from its venv, taskloom by `python -m taskloom.cli merge merge.yaml --out out/` from .venv
(full-model folders merge as task vectors W − W₀). Each runs as a child process measured the same way:
wall time around it and its peak RSS from `wait4` (ru_maxrss). Runs alternate (mergekit, taskloom,
taskloom, mergekit, ...); the table shows the best time and the largest peak of each. Then the two
outputs are compared tensor by tensor. Last line: `ratio: X` = mergekit's time / taskloom's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-merge"
VENV = ROOT / ".cache" / "bench-mergekit"
MODEL = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)
FINE_TUNES = {"ft-a": 1, "ft-b": 2}  # folder -> seed of its perturbation
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}


def ensure_models() -> dict[str, Path]:
    """base/, ft-a/, ft-b/ under .cache/bench-merge (made once)."""
    paths = {name: CACHE / name for name in ("base", *FINE_TUNES)}
    if all((p / "config.json").exists() for p in paths.values()):
        return paths
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    print(f"making the models in {CACHE} (once)", flush=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**MODEL)).float()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _save(model, paths["base"])
    for name, seed in FINE_TUNES.items():
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, p in model.named_parameters():
                w0 = base[key]
                spread = float(w0.std()) if w0.numel() > 1 and float(w0.std()) > 0 else 1.0
                p.copy_(w0 + 0.03 * spread * torch.randn(w0.shape, generator=g))
        _save(model, paths[name])
    return paths


def _save(model, folder: Path) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def ensure_mergekit() -> Path:
    """The venv's mergekit-yaml; created on first run (torch==2.13.0 first: the CPU wheel, then mergekit)."""
    exe = VENV / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe
    print(f"creating {VENV} with mergekit (once; log in .cache/bench-mergekit-install.log)", flush=True)
    with open(ROOT / ".cache" / "bench-mergekit-install.log", "w") as log:
        for cmd in ([sys.executable, "-m", "venv", str(VENV)],
                    [str(VENV / "bin" / "pip"), "install", "torch==2.13.0"],
                    [str(VENV / "bin" / "pip"), "install", "mergekit"]):
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return exe


def write_configs(paths: dict[str, Path], work: Path) -> tuple[Path, Path]:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    mk = {"merge_method": "ties", "base_model": str(paths["base"]), "dtype": "float32",
          "models": [{"model": str(paths[n]), "parameters": {"density": 0.5, "weight": 0.5}} for n in FINE_TUNES]}
    tl = {"method": "ties", "base_model": str(paths["base"]), "output": "full", "parameters": {"density": 0.5},
          "adapters": [{"path": str(paths[n]), "weight": 0.5} for n in FINE_TUNES]}
    (work / "config.yml").write_text(yaml.safe_dump(mk, sort_keys=False))
    (work / "merge.yaml").write_text(yaml.safe_dump(tl, sort_keys=False))
    return work / "config.yml", work / "merge.yaml"


def measure(cmd: list[str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child process; exits with its log on failure."""
    env = {**os.environ, **ENV}
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n" + log.read_text()[-3000:])
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def compare(a_dir: Path, b_dir: Path, base_dir: Path, inputs: list[Path], density: float) -> dict:
    """Per tensor: max |a − b| and the merged Δ's largest entry for scale, one tensor at a time. Where
    the two differ, count the differing entries whose |Δᵢ| of some input sits exactly at that input's
    trim threshold (a tie at the k-th largest magnitude, which the two tools break differently)."""
    import torch
    from safetensors import safe_open

    def index(folder: Path) -> dict:
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    def read(where: dict, key: str):
        with safe_open(str(where[key]), "pt") as h:
            return h.get_tensor(key).float()

    ia, ib, i0 = index(a_dir), index(b_dir), index(base_dir)
    ins = [index(p) for p in inputs]
    rows, missing = [], sorted(set(i0) - set(ia) | set(i0) - set(ib))
    for key in sorted(set(ia) & set(ib) & set(i0)):
        a, b, w0 = read(ia, key), read(ib, key), read(i0, key)
        diff = (a - b).abs().view(-1)
        d = b - w0
        bad = torch.nonzero(diff > 1e-6).view(-1)
        at_tie = torch.zeros(len(bad), dtype=torch.bool)
        if len(bad):
            for where in ins:
                m = (read(where, key) - w0).abs().view(-1)
                k = max(1, int(density * m.numel()))
                threshold = torch.kthvalue(m, m.numel() - k + 1).values
                at_tie |= (m[bad] == threshold) & (int((m == threshold).sum()) > 1)
        rows.append({"tensor": key, "numel": a.numel(), "max_abs_diff": float(diff.max()), "differing": len(bad),
                     "at_tie": int(at_tie.sum()), "delta_max": float(d.abs().max()),
                     "rel_fro": float((a - b).norm() / d.norm().clamp_min(1e-30))})
    return {"rows": rows, "missing": missing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="runs of each tool (alternating); best time is kept")
    args = ap.parse_args()

    paths = ensure_models()
    mergekit = ensure_mergekit()
    work = CACHE / "run"
    mk_cfg, tl_cfg = write_configs(paths, work)
    outs = {"mergekit": work / "out-mergekit", "taskloom": work / "out-taskloom"}
    cmds = {
        "mergekit": [str(mergekit), str(mk_cfg), str(outs["mergekit"])],
        "taskloom": [str(ROOT / ".venv" / "bin" / "python"), "-m", "taskloom.cli", "merge", str(tl_cfg), "--out", str(outs["taskloom"])],
    }
    size = sum(f.stat().st_size for f in paths["base"].glob("*.safetensors")) / 2**20
    print(f"inputs: base + 2 fine-tunes, {size:.0f} MiB each (float32, {MODEL['num_hidden_layers']} layers, "
          f"hidden {MODEL['hidden_size']}); ties density 0.5, weight 0.5 each", flush=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)

    times = {k: [] for k in cmds}
    peaks = {k: [] for k in cmds}
    order = []
    for r in range(args.repeats):
        order += ["mergekit", "taskloom"] if r % 2 == 0 else ["taskloom", "mergekit"]
    for i, tool in enumerate(order):
        shutil.rmtree(outs[tool], ignore_errors=True)
        wall, peak = measure(cmds[tool], work / f"{tool}-{i}.log")
        times[tool].append(wall)
        peaks[tool].append(peak)
        print(f"  run {i + 1}/{len(order)} {tool:9s} {wall:7.2f} s  peak RSS {peak:7.0f} MiB", flush=True)

    cmp = compare(outs["taskloom"], outs["mergekit"], paths["base"], [paths[n] for n in FINE_TUNES], 0.5)
    rows = cmp["rows"]
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    n_diff = sum(r["differing"] for r in rows)
    n_all = sum(r["numel"] for r in rows)
    report = json.loads((outs["taskloom"] / "merge_report.json").read_text())

    print()
    print("| tool | wall s (best) | peak RSS MiB (max) | runs |")
    print("|---|---|---|---|")
    for tool in ("taskloom", "mergekit"):
        print(f"| {tool} | {min(times[tool]):.2f} | {max(peaks[tool]):.0f} | {', '.join(f'{t:.1f}' for t in times[tool])} |")
    print()
    print(f"outputs compared on {len(rows)} tensors ({n_all / 1e6:.1f}M values); missing on one side: {cmp['missing'] or 'none'}")
    print(f"max |taskloom − mergekit| over all tensors: {worst['max_abs_diff']:.3g} (in {worst['tensor']}; "
          f"that tensor's largest merged Δ is {worst['delta_max']:.3g})")
    print(f"values differing by more than 1e-6: {n_diff} of {n_all} ({n_diff / n_all:.2e}); of these, "
          f"{sum(r['at_tie'] for r in rows)} lie where an input's |Δ| ties at its trim threshold")
    print(f"largest relative Frobenius difference of the merged Δ per tensor: {max(r['rel_fro'] for r in rows):.3g}")
    for r in sorted(rows, key=lambda r: -r["max_abs_diff"])[:5]:
        print(f"  {r['tensor']:45s} max diff {r['max_abs_diff']:.3g}  differing {r['differing']}/{r['numel']}")
    print(f"taskloom's own record: {report['seconds']} s inside the merge, peak RSS {report['peak_rss_mb']} MiB")
    print(f"memory: taskloom/mergekit = {max(peaks['taskloom']) / max(peaks['mergekit']):.2f}")
    print(f"ratio: {min(times['mergekit']) / min(times['taskloom']):.2f}")


if __name__ == "__main__":
    main()
