"""Serving against a peer embedding server: taskloom on Triton vs infinity-emb, same ONNX graph.

    .venv/bin/python bench/serve_vs_infinity.py [--requests 384] [--repeats 3]

fp32: both servers hold MiniLM as the same ONNX graph (taskloom's export, `serve.onnx_runtime`) on
ONNX Runtime, on this machine's cores, with batches of up to 64 requests:
- taskloom: the bundled tritonserver with `build_repository("minilm")` (dynamic batching, 1 ms queue
  delay, length-sorted chunks); one gRPC client per client thread;
- infinity-emb 0.0.78, `--engine optimum --device cpu --batch-size 64`, in its own venv
  (.cache/bench-infinity/, made on the first run), the graph placed as model.onnx beside a copy of
  the model folder; one keep-alive HTTP connection per client thread, POST /embeddings.
Fast path, each side's bf16: taskloom's `precision="bf16"` model in the same server against a second
infinity-emb, `--engine torch --dtype bfloat16` (sentence-transformers in bf16 on this CPU's AMX).
Thread wait policy: taskloom's ONNX Runtime threads sleep when idle. infinity's would spin (ORT's
default), so a sitecustomize.py in its venv turns spinning off for every ORT session the same way.
Telemetry is off (DO_NOT_TRACK=1).

One text per request (Rotten Tomatoes reviews), concurrency 16 and 64, the two servers run
alternately (taskloom, infinity, taskloom, ...) for --repeats rounds, each up and warm throughout,
the idle one using no CPU; medians of the rounds. Outputs compared: every text's two fp32 embeddings
must have cosine >= 0.999, each bf16 path's >= 0.995 against taskloom's fp32. The float32 matmul peak is measured first with nothing else running.
Useful work: 2 × non-embedding parameters × real (non-padding) tokens per second, against that peak.
Last line: `ratio: X`, taskloom's median req/s over infinity's at concurrency 64.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(_k, _v)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak import matmul_gflops  # noqa: E402
from serve_throughput import review_texts, run_load  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".cache" / "bench-infinity"
PY = VENV / "bin" / "python"
LEVELS = (16, 64)
NO_SPIN = '''# written by bench/serve_vs_infinity.py: ONNX Runtime's idle threads sleep, as taskloom's do
import onnxruntime as _ort

_Session = _ort.InferenceSession


class _NoSpin(_Session):
    def __init__(self, path_or_bytes, sess_options=None, *args, **kwargs):
        sess_options = sess_options or _ort.SessionOptions()
        sess_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        super().__init__(path_or_bytes, sess_options, *args, **kwargs)


_ort.InferenceSession = _NoSpin
'''


def ensure_venv() -> None:
    """.cache/bench-infinity with infinity-emb and its optimum (ONNX Runtime) engine, once."""
    if not (PY.exists() and subprocess.run([str(PY), "-c", "import infinity_emb, optimum.onnxruntime"],
                                           capture_output=True).returncode == 0):
        print(f"creating {VENV} (torch==2.13.0, infinity-emb[server,torch,optimum]==0.0.78; a few minutes)", flush=True)
        subprocess.run(["python3", "-m", "venv", str(VENV)], check=True)
        pip = [str(PY), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "torch==2.13.0"], check=True)  # first: the CPU build, not a CUDA one
        subprocess.run([*pip, "infinity-emb[server,torch,optimum]==0.0.78"], check=True)
    site = subprocess.run([str(PY), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "sitecustomize.py").write_text(NO_SPIN)


def model_folder(tmp: Path) -> Path:
    """A copy of the MiniLM folder with taskloom's ONNX export as model.onnx (what optimum loads)."""
    from taskloom.models.registry import resolve_base
    from taskloom.serve.onnx_runtime import export_encoder

    src = Path(resolve_base("minilm"))
    dst = tmp / "minilm-onnx"
    shutil.copytree(src, dst)
    export_encoder(src, dst / "model.onnx")
    return dst


class Infinity:
    """`infinity_emb v2` as a subprocess on a free port."""

    def __init__(self, folder: Path, log: Path, engine: str = "optimum", dtype: str = "float32"):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
               "HF_HOME": str(log.parent / "hf")}
        cmd = [str(VENV / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--served-model-name", "minilm",
               "--engine", engine, "--dtype", dtype, "--device", "cpu", "--batch-size", "64", "--pooling-method", "mean", "--port", str(self.port),
               "--host", "127.0.0.1", "--log-level", "warning"]
        self.out = open(log, "wb")  # noqa: SIM115 (open while the server runs)
        # run from inside the folder: infinity lists a local model's files relative to --model-id, and
        # optimum finds model.onnx only by a name relative to the folder
        self.proc = subprocess.Popen(cmd, stdout=self.out, stderr=subprocess.STDOUT, env=env, cwd=folder)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"infinity_emb exited:\n{log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise SystemExit(f"infinity_emb not ready after 300 s:\n{log.read_text()[-3000:]}")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.out.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=384, help="requests per concurrency level and round")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (each runs both servers at every level)")
    args = ap.parse_args(argv)

    import torch

    from taskloom.serve.client import TritonClient
    from taskloom.serve.launcher import TritonServer
    from taskloom.serve.repository import build_repository

    ensure_venv()
    texts = review_texts(args.requests)
    print(f"machine: {os.cpu_count()} CPUs; load average at start {os.getloadavg()[0]:.2f}", flush=True)
    peak = matmul_gflops(torch.float32, 2048, 2048, 2048, seconds=2.0)
    print(f"float32 matmul peak (2048^3, best of 2 s, nothing else running): {peak:.1f} GFLOP/s", flush=True)

    from transformers import AutoModel, AutoTokenizer

    from taskloom.models.registry import resolve_base

    path = resolve_base("minilm")
    params = sum(p.numel() for n, p in AutoModel.from_pretrained(path).named_parameters() if not n.startswith("embeddings."))
    tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(path)(texts, truncation=True, max_length=128)["input_ids"])

    local = threading.local()
    runs: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-infinity-") as tmp_name:
        tmp = Path(tmp_name)
        repo = tmp / "repo"
        build_repository("minilm", repo, name="taskloom", engine="onnxruntime", max_batch_size=64,
                         max_queue_delay_us=1000)
        folder = model_folder(tmp)
        build_repository("minilm", repo, name="taskloom_bf16", precision="bf16", max_batch_size=64,
                         max_queue_delay_us=1000)
        inf = Infinity(folder, tmp / "infinity.log")
        inf_bf16 = Infinity(folder, tmp / "infinity-bf16.log", engine="torch", dtype="bfloat16")
        try:
            with TritonServer(repo, log_dir=tmp / "logs") as server:
                def triton(_, text, model="taskloom"):
                    c = getattr(local, model, None)
                    if c is None:
                        c = TritonClient(server.grpc_url, model=model, protocol="grpc", timeout=120)
                        setattr(local, model, c)
                    return c.infer([text])["embedding"][0]

                def infinity(_, text, port=inf.port):
                    conn = getattr(local, f"http{port}", None)
                    if conn is None:
                        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                        setattr(local, f"http{port}", conn)
                    body = json.dumps({"model": "minilm", "input": [text]})
                    conn.request("POST", "/embeddings", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    data = r.read()
                    if r.status != 200:
                        raise RuntimeError(f"infinity: HTTP {r.status}: {data[:200]!r}")
                    return np.asarray(json.loads(data)["data"][0]["embedding"], dtype=np.float32)

                sides = {"taskloom": triton, "infinity": infinity,
                         "taskloom bf16": functools.partial(triton, model="taskloom_bf16"),
                         "infinity bf16": functools.partial(infinity, port=inf_bf16.port)}
                for call in sides.values():
                    run_load(call, texts[:64], 16)  # warm: sessions, connections, batch shapes
                for r in range(args.repeats):
                    for c in LEVELS:
                        for name, call in sides.items():
                            res = run_load(call, texts, c)
                            runs.setdefault((name, c), []).append(res)
                            print(f"round {r + 1} conc {c:>3} {name:<9} {res['rps']:7.1f} req/s  "
                                  f"p99 {res['p99_ms']:7.1f} ms", flush=True)
        finally:
            inf.close()
            inf_bf16.close()

    print(f"\ninputs: {len(texts)} reviews, {tokens / len(texts):.1f} real tokens each; {params / 1e6:.2f} M non-embedding "
          f"parameters\n\n{'system':<34}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'% of peak':>11}  rounds (req/s)")
    med = {}
    labels = {"taskloom": "taskloom (Triton, ORT fp32)", "infinity": "infinity-emb (optimum, ORT fp32)",
              "taskloom bf16": "taskloom (Triton, bf16 path)", "infinity bf16": "infinity-emb (torch, bf16)"}
    for (name, c), rs in sorted(runs.items(), key=lambda kv: (kv[0][1], list(labels).index(kv[0][0]))):
        med[name, c] = {k: float(np.median([r[k] for r in rs])) for k in ("rps", "p50_ms", "p99_ms")}
        label = labels[name]
        print(f"{label:<34}{c:>5}{med[name, c]['rps']:>9.1f}{med[name, c]['p50_ms']:>9.1f}"
              f"{med[name, c]['p99_ms']:>9.1f}{100 * 2 * params * tokens / len(texts) * med[name, c]['rps'] / 1e9 / peak:>10.1f}%  {', '.join(format(r['rps'], '.1f') for r in rs)}")
    def cosine(a: str, b: str) -> float:
        return min(float((x["out"] * y["out"]).sum(1).min()) for c in LEVELS for x, y in zip(runs[a, c], runs[b, c]))

    cos = cosine("taskloom", "infinity")
    fast = {side: cosine(side, "taskloom") for side in ("taskloom bf16", "infinity bf16")}
    print(f"\nmin cosine per text: taskloom vs infinity fp32 {cos:.6f} (need >= 0.999); against taskloom fp32: "
          + ", ".join(f"{k} {v:.4f}" for k, v in fast.items()) + " (need >= 0.995)")
    for prefix in ("", " bf16"):
        for c in LEVELS:
            t, i = med["taskloom" + prefix, c], med["infinity" + prefix, c]
            ok = t["rps"] >= 1.3 * i["rps"] and t["p99_ms"] <= i["p99_ms"]
            print(f"{prefix.strip() or 'fp32'}, concurrency {c}: req/s ratio {t['rps'] / i['rps']:.2f}, p99 "
                  f"{t['p99_ms']:.1f} vs {i['p99_ms']:.1f} ms (>= 1.3x at a p99 no higher: {'met' if ok else 'missed'})")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"ratio: {med['taskloom', 64]['rps'] / med['infinity', 64]['rps']:.2f}")
    return 0 if cos >= 0.999 and min(fast.values()) >= 0.995 else 1


if __name__ == "__main__":
    sys.exit(main())
