"""Serving throughput: taskloom on Triton vs the Hugging Face model called in-process, one text per request.

    .venv/bin/python bench/serve_throughput.py                    # fp32 + the bf16 fast path
    .venv/bin/python bench/serve_throughput.py --fast int8 --requests 512

Same inputs for both (real Rotten Tomatoes reviews from `build_task("rt-sentiment")`), concurrency 1,
4 and 16 (threads, each sending one text per request and waiting for its answer):
- baseline: AutoModel + tokenizer in this process, called once per request from a thread pool
  (mean pool + L2 normalise, the same embedding);
- taskloom: the bundled tritonserver serving `build_repository("minilm")` (dynamic batching, texts
  sorted by length into chunks that waste little on padding, the fp32 body on ONNX Runtime with
  sleeping idle threads; `--engine torch` for PyTorch instead), one gRPC client per thread; the fast path (`--fast`) is a second model of the same server with dynamic int8
  (or bf16) Linear layers, reported separately.
Outputs must agree: cosine >= 0.999 between the two fp32 embeddings of every text (>= 0.995 for the
fast path against fp32). Also printed: the float32 matmul peak of this machine measured here, and the
share of it that useful work reaches (2 × non-embedding parameters × real, non-padding tokens per
second). The last line is `ratio: X`, taskloom's requests/s over the baseline's at concurrency 16.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

# OMP_WAIT_POLICY=PASSIVE for the baseline too (the launcher sets it for the server): on a busy machine
# spinning OpenMP threads slow torch down many times over, and the comparison is about serving, not that
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": "PASSIVE"}.items():
    os.environ.setdefault(_k, _v)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak import matmul_gflops  # noqa: E402

LEVELS = (1, 4, 16)


def review_texts(n: int) -> list[str]:
    """n real reviews (the eval split of rt-sentiment, in its fixed order, cycled if n is larger)."""
    from taskloom.tasks.catalog import build_task

    _, _, rows = build_task("rt-sentiment")
    texts = [r["text"] for r in rows]
    return [texts[i % len(texts)] for i in range(n)]


def run_load(call, texts: list[str], concurrency: int) -> dict:
    """Send every text once, `concurrency` requests in flight; latency per request and overall rate."""
    latencies = [0.0] * len(texts)
    outputs: list = [None] * len(texts)
    nxt = iter(range(len(texts)))
    lock = threading.Lock()

    def worker(state):
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t0 = time.perf_counter()
            outputs[i] = call(state, texts[i])
            latencies[i] = time.perf_counter() - t0

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, [None] * concurrency))
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {"rps": len(texts) / wall, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "seconds": wall, "out": np.stack(outputs)}


def baseline(texts: list[str], levels) -> tuple[dict, int, int]:
    """The Hugging Face model in this process, one forward per request from a thread pool."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel, AutoTokenizer

    from taskloom.models.encoder import mean_pool
    from taskloom.models.registry import resolve_base

    path = resolve_base("minilm")
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def embed_one(_, text):
        batch = tok([text], truncation=True, max_length=128, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**batch).last_hidden_state
        return F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)[0].numpy()

    for t in texts[:8]:
        embed_one(None, t)
    results = {c: run_load(embed_one, texts, c) for c in levels}
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("embeddings."))
    tokens = sum(len(ids) for ids in tok(texts, truncation=True, max_length=128)["input_ids"])
    return results, params, tokens


def taskloom_on_triton(texts: list[str], levels, fast: str, queue_delay_us: int, threads: int | None,
                       instances: int, engine: str = "auto") -> dict:
    """Both models in one server: fp32 `taskloom` and the fast path; one gRPC client per thread."""
    from taskloom.serve.client import TritonClient
    from taskloom.serve.launcher import TritonServer
    from taskloom.serve.repository import build_repository

    local = threading.local()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        repo = Path(tmp) / "repo"
        opts = dict(max_batch_size=64, max_queue_delay_us=queue_delay_us, threads=threads, instances=instances)
        build_repository("minilm", repo, name="taskloom", engine=engine, **opts)
        models = ["taskloom"]
        if fast != "none":
            build_repository("minilm", repo, name=f"taskloom_{fast}", precision=fast, **opts)
            models.append(f"taskloom_{fast}")
        with TritonServer(repo, log_dir=Path(tmp) / "logs") as server:
            for model in models:
                clients = []

                def call(_, text, model=model, clients=clients):
                    c = getattr(local, model, None)
                    if c is None:
                        c = TritonClient(server.grpc_url, model=model, protocol="grpc", timeout=120)
                        setattr(local, model, c)
                        clients.append(c)
                    return c.infer([text])["embedding"][0]

                for t in texts[:8]:
                    call(None, t)
                results[model] = {c: run_load(call, texts, c) for c in (levels if model == "taskloom" else levels[-1:])}
                for c in clients:
                    c.close()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=384, help="requests per concurrency level")
    ap.add_argument("--fast", choices=["bf16", "int8", "none"], default="bf16", help="the fast path to report too")
    ap.add_argument("--queue-delay-us", type=int, default=1000, help="Triton dynamic batching delay")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per model instance (default: torch's)")
    ap.add_argument("--instances", type=int, default=1, help="Triton model instances (one process each)")
    ap.add_argument("--engine", choices=["auto", "torch", "onnxruntime"], default="auto",
                    help="the fp32 model's engine (auto: ONNX Runtime, as `build_repository` picks)")
    args = ap.parse_args(argv)

    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    texts = review_texts(args.requests)
    peak = matmul_gflops(torch.float32, 2048, 2048, 2048, seconds=2.0)
    print(f"float32 matmul peak (2048^3, best of 2 s): {peak:.1f} GFLOP/s", flush=True)
    base, params, tokens = baseline(texts, LEVELS)
    print(f"inputs: {len(texts)} Rotten Tomatoes reviews, {tokens} real tokens ({tokens / len(texts):.1f} per text); "
          f"encoder {params / 1e6:.2f} M non-embedding parameters", flush=True)
    served = taskloom_on_triton(texts, LEVELS, args.fast, args.queue_delay_us, args.threads, args.instances,
                                args.engine)
    engine = "onnxruntime" if args.engine == "auto" else args.engine

    def useful(r):  # GFLOP/s of real (non-padding) tokens through the encoder's matmuls
        return 2 * params * tokens / r["seconds"] / 1e9

    print(f"\n{'system':<30}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'useful GFLOP/s':>16}{'% of peak':>11}")
    rows = [("baseline (in-process)", c, base[c]) for c in LEVELS]
    rows += [(f"taskloom (fp32, {engine})", c, served["taskloom"][c]) for c in LEVELS]
    if args.fast != "none":
        rows += [(f"taskloom ({args.fast})", LEVELS[-1], served[f"taskloom_{args.fast}"][LEVELS[-1]])]
    for name, c, r in rows:
        print(f"{name:<30}{c:>5}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}{useful(r):>16.1f}"
              f"{100 * useful(r) / peak:>10.1f}%")
    ref = base[LEVELS[-1]]["out"]
    cos = {c: float((served["taskloom"][c]["out"] * ref).sum(1).min()) for c in LEVELS}
    print(f"\nmin cosine taskloom fp32 vs in-process, per text: {min(cos.values()):.6f} (need >= 0.999)")
    ok = min(cos.values()) >= 0.999
    if args.fast != "none":
        fast = served[f"taskloom_{args.fast}"][LEVELS[-1]]
        fcos = float((fast["out"] * ref).sum(1).min())
        print(f"min cosine taskloom {args.fast} vs fp32: {fcos:.6f} (need >= 0.995); "
              f"{args.fast} ratio at {LEVELS[-1]}: {fast['rps'] / base[LEVELS[-1]]['rps']:.2f}")
        ok = ok and fcos >= 0.995
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    print(f"ratio: {served['taskloom'][LEVELS[-1]]['rps'] / base[LEVELS[-1]]['rps']:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
