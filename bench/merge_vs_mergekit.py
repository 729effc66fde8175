"""TIES merge of two full fine-tunes of a Llama model: taskloom vs mergekit, same inputs, same run.

    .venv/bin/python bench/merge_vs_mergekit.py            # 3 interleaved repetitions (--repeats N)

Models are made here, nothing is downloaded: a random `LlamaConfig` model (hidden 1024, 8 layers,
vocab 32000: 160M parameters, 640 MB in float32) saved with `save_pretrained` as the base, and two
"fine-tunes" = base + seeded random perturbations (a few % of each tensor's spread), all in
.cache/bench-merge/ (made once, reused). mergekit (LGPL-3.0, a benchmark baseline only, never a
taskloom dependency) gets its own venv in .cache/bench-mergekit/ on first run.

Both merges are `ties`, density 0.5, weight 0.5 each, float32, on the same thread settings
(OMP_WAIT_POLICY=PASSIVE, OMP_NUM_THREADS=MKL_NUM_THREADS=2). mergekit gets its best configuration
for this machine: `--num-threads 2 --out-shard-size 100M --no-copy-tokenizer --quiet`
(`--lazy-unpickle` only changes how pickled `.bin` inputs load; these inputs are safetensors, and it
is off unless `--lazy-unpickle` is given here). taskloom runs `python -m taskloom.cli merge merge.yaml
--out out/` (full-model folders merge as task vectors W − W₀).

Each run is one child process: wall time around it and its peak RSS from `wait4` (ru_maxrss). The
in-process merge time excludes interpreter start-up and imports: for mergekit, a script written to
.cache/bench-merge/run/ runs the `mergekit-yaml` command itself (same flags) with a timer around
`mergekit.merge.run_merge` only; for taskloom, the `seconds` its merge records in
merge_report.json (around `merge_adapters`: reading, merging, writing, fsync, digests). Runs
alternate mergekit, taskloom, mergekit, taskloom, ...; the tables give medians and every run.

The I/O bound, measured in the same run before each pair of runs (best of them): page-cache read
bandwidth = the three input files (warm) read with positional reads into one buffer, and write
bandwidth = the output's size written in 16 MiB chunks to a file in the output folder, with an fsync
at the end as taskloom does (mergekit's safetensors writer does not fsync; the bound without it is
printed too). I/O bound = bytes read / read bandwidth + bytes written / write bandwidth.

Then the two outputs are compared tensor by tensor. Last line: `ratio: X` = mergekit's median wall
time / taskloom's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
THREADS = 2
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
       "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}
MERGEKIT_FLAGS = ["--num-threads", str(THREADS), "--out-shard-size", "100M", "--no-copy-tokenizer", "--quiet"]
# Runs `mergekit-yaml ARGS` in its venv with a timer around run_merge only; seconds to argv[1].
MERGEKIT_TIMED = '''import json, sys, time
from mergekit.scripts import run_yaml

result, args = sys.argv[1], sys.argv[2:]
inner = run_yaml.run_merge


def timed(*a, **k):
    t0 = time.perf_counter()
    inner(*a, **k)
    seconds = time.perf_counter() - t0
    with open(result, "w") as f:
        json.dump({"seconds": seconds}, f)


run_yaml.run_merge = timed
run_yaml.main.main(args=args, prog_name="mergekit-yaml", standalone_mode=False)
'''


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
    """The venv's python with mergekit; created on first run (torch==2.13.0 first: the CPU wheel, then mergekit)."""
    exe = VENV / "bin" / "mergekit-yaml"
    if not exe.exists():
        print(f"creating {VENV} with mergekit (once; log in .cache/bench-mergekit-install.log)", flush=True)
        with open(ROOT / ".cache" / "bench-mergekit-install.log", "w") as log:
            for cmd in ([sys.executable, "-m", "venv", str(VENV)],
                        [str(VENV / "bin" / "pip"), "install", "torch==2.13.0"],
                        [str(VENV / "bin" / "pip"), "install", "mergekit"]):
                subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return VENV / "bin" / "python"


def write_configs(paths: dict[str, Path], work: Path) -> tuple[Path, Path, Path]:
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    mk = {"merge_method": "ties", "base_model": str(paths["base"]), "dtype": "float32",
          "models": [{"model": str(paths[n]), "parameters": {"density": 0.5, "weight": 0.5}} for n in FINE_TUNES]}
    tl = {"method": "ties", "base_model": str(paths["base"]), "output": "full", "parameters": {"density": 0.5},
          "adapters": [{"path": str(paths[n]), "weight": 0.5} for n in FINE_TUNES]}
    (work / "config.yml").write_text(yaml.safe_dump(mk, sort_keys=False))
    (work / "merge.yaml").write_text(yaml.safe_dump(tl, sort_keys=False))
    (work / "mergekit_timed.py").write_text(MERGEKIT_TIMED)
    return work / "config.yml", work / "merge.yaml", work / "mergekit_timed.py"


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


def read_bandwidth(files: list[Path], chunk: int = 16 << 20) -> float:
    """Bytes/s reading `files` (already in the page cache) with positional reads into one buffer."""
    buf = bytearray(chunk)
    total, t0 = 0, time.perf_counter()
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            offset = 0
            while got := os.preadv(fd, [buf], offset):
                offset += got
            total += offset
        finally:
            os.close(fd)
    return total / (time.perf_counter() - t0)


def write_bandwidth(folder: Path, size: int, chunk: int = 16 << 20) -> tuple[float, float]:
    """(bytes/s with an fsync at the end, bytes/s without it) writing `size` bytes to a new file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "write-bandwidth.tmp"
    data = memoryview(os.urandom(chunk))
    try:
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            left = size
            while left > 0:
                left -= f.write(data[: min(chunk, left)])
            f.flush()
            t1 = time.perf_counter()
            os.fsync(f.fileno())
        t2 = time.perf_counter()
    finally:
        path.unlink(missing_ok=True)
    return size / (t2 - t0), size / (t1 - t0)


def weight_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


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
    ap.add_argument("--repeats", type=int, default=3, help="runs of each tool (interleaved); medians are reported")
    ap.add_argument("--lazy-unpickle", action="store_true", help="give mergekit --lazy-unpickle too")
    args = ap.parse_args()

    paths = ensure_models()
    mk_python = ensure_mergekit()
    work = CACHE / "run"
    mk_cfg, tl_cfg, mk_script = write_configs(paths, work)
    outs = {"mergekit": work / "out-mergekit", "taskloom": work / "out-taskloom"}
    results = {"mergekit": work / "mergekit-seconds.json", "taskloom": outs["taskloom"] / "merge_report.json"}
    mk_flags = MERGEKIT_FLAGS + (["--lazy-unpickle"] if args.lazy_unpickle else [])
    cmds = {
        "mergekit": [str(mk_python), str(mk_script), str(results["mergekit"]), str(mk_cfg), str(outs["mergekit"]),
                     *mk_flags],
        "taskloom": [str(ROOT / ".venv" / "bin" / "python"), "-m", "taskloom.cli", "merge", str(tl_cfg),
                     "--out", str(outs["taskloom"])],
    }
    inputs = [f for name in ("base", *FINE_TUNES) for f in sorted(paths[name].glob("*.safetensors"))]
    read_bytes = sum(f.stat().st_size for f in inputs)
    print(f"inputs: base + 2 fine-tunes, {weight_bytes(paths['base']) / 2**20:.0f} MiB each (float32, "
          f"{MODEL['num_hidden_layers']} layers, hidden {MODEL['hidden_size']}); ties density 0.5, weight 0.5 each")
    print(f"threads: {' '.join(f'{k}={v}' for k, v in ENV.items() if 'THREADS' in k or 'OMP' in k)} for both; "
          f"mergekit flags: {' '.join(mk_flags)}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    read_bandwidth(inputs)  # warm the page cache

    times = {k: [] for k in cmds}
    inside = {k: [] for k in cmds}
    peaks = {k: [] for k in cmds}
    loads: list[float] = []
    bw_read: list[float] = []
    bw_write: list[tuple[float, float]] = []
    write_bytes = 0
    for r in range(args.repeats):
        bw_read.append(read_bandwidth(inputs))
        bw_write.append(write_bandwidth(work, write_bytes or weight_bytes(paths["base"])))
        print(f"  I/O: page-cache read {bw_read[-1] / 2**30:.2f} GiB/s, write {bw_write[-1][0] / 2**30:.2f} GiB/s "
              f"with fsync ({bw_write[-1][1] / 2**30:.2f} GiB/s without)", flush=True)
        for tool in ("mergekit", "taskloom"):
            shutil.rmtree(outs[tool], ignore_errors=True)
            results[tool].unlink(missing_ok=True)
            load0 = os.getloadavg()[0]
            wall, peak = measure(cmds[tool], work / f"{tool}-{r}.log")
            load = (load0 + os.getloadavg()[0]) / 2
            seconds = float(json.loads(results[tool].read_text())["seconds"])
            times[tool].append(wall)
            inside[tool].append(seconds)
            peaks[tool].append(peak)
            loads.append(load)
            print(f"  run {r + 1}/{args.repeats} {tool:9s} wall {wall:6.2f} s  in-process {seconds:6.2f} s  "
                  f"peak RSS {peak:6.0f} MiB  load average {load:.2f}", flush=True)
        write_bytes = weight_bytes(outs["taskloom"])

    read_bw, (write_bw, write_bw_nosync) = max(bw_read), max(bw_write)
    io_bound = read_bytes / read_bw + write_bytes / write_bw
    io_bound_nosync = read_bytes / read_bw + write_bytes / write_bw_nosync
    med = {k: statistics.median(v) for k, v in times.items()}
    med_in = {k: statistics.median(v) for k, v in inside.items()}

    cmp = compare(outs["taskloom"], outs["mergekit"], paths["base"], [paths[n] for n in FINE_TUNES], 0.5)
    rows = cmp["rows"]
    worst = max(rows, key=lambda r: r["max_abs_diff"])
    n_diff = sum(r["differing"] for r in rows)
    n_all = sum(r["numel"] for r in rows)

    print()
    print("| tool | wall s (median) | in-process s (median) | peak RSS MiB (max) | wall runs | in-process runs |")
    print("|---|---|---|---|---|---|")
    for tool in ("taskloom", "mergekit"):
        print(f"| {tool} | {med[tool]:.2f} | {med_in[tool]:.2f} | {max(peaks[tool]):.0f} | "
              f"{', '.join(f'{t:.1f}' for t in times[tool])} | {', '.join(f'{t:.1f}' for t in inside[tool])} |")
    print()
    print(f"I/O: read {read_bytes / 2**20:.0f} MiB at {read_bw / 2**30:.2f} GiB/s (page cache), write "
          f"{write_bytes / 2**20:.0f} MiB at {write_bw / 2**30:.2f} GiB/s with fsync ({write_bw_nosync / 2**30:.2f} "
          f"without); best of {args.repeats} measurements")
    print(f"I/O bound: {io_bound:.2f} s ({io_bound_nosync:.2f} s without fsync); taskloom in-process = "
          f"{med_in['taskloom'] / io_bound:.1f}x it, wall = {med['taskloom'] / io_bound:.1f}x; "
          f"mergekit in-process = {med_in['mergekit'] / io_bound:.1f}x")
    print(f"load average during the runs: {min(loads):.2f}-{max(loads):.2f} (median {statistics.median(loads):.2f})")
    print()
    print(f"outputs compared on {len(rows)} tensors ({n_all / 1e6:.1f}M values); missing on one side: {cmp['missing'] or 'none'}")
    print(f"max |taskloom − mergekit| over all tensors: {worst['max_abs_diff']:.3g} (in {worst['tensor']}; "
          f"that tensor's largest merged Δ is {worst['delta_max']:.3g})")
    print(f"values differing by more than 1e-6: {n_diff} of {n_all} ({n_diff / n_all:.2e}); of these, "
          f"{sum(r['at_tie'] for r in rows)} lie where an input's |Δ| ties at its trim threshold")
    print(f"largest relative Frobenius difference of the merged Δ per tensor: {max(r['rel_fro'] for r in rows):.3g}")
    for r in sorted(rows, key=lambda r: -r["max_abs_diff"])[:5]:
        print(f"  {r['tensor']:45s} max diff {r['max_abs_diff']:.3g}  differing {r['differing']}/{r['numel']}")
    print(f"memory: taskloom/mergekit = {max(peaks['taskloom']) / max(peaks['mergekit']):.2f} (largest peaks)")
    print(f"in-process ratio: {med_in['mergekit'] / med_in['taskloom']:.2f}")
    print(f"ratio: {med['mergekit'] / med['taskloom']:.2f}")


if __name__ == "__main__":
    main()
