"""Serving's fast path: can a bf16 or int8 engine using this CPU's AMX/VNNI beat the fp32 ONNX Runtime body 2x?

    .venv/bin/python bench/serve_fast_path.py                  # every candidate, 3 interleaved rounds
    .venv/bin/python bench/serve_fast_path.py --only ov-bf16-latency,ort-int8-qdq --rounds 5

OpenVINO (a candidate only) is installed on first run into .cache/bench-openvino/, pinned.

In-process, one pool of `--threads` (2) threads per engine, the body only differing: 512 real Rotten
Tomatoes reviews (the eval split of rt-sentiment, tokenized once, max 128 tokens), sorted by length
and cut into batches of 32, each padded to its longest row; mean pooling over real tokens and L2
normalisation exactly as `taskloom.serve.backend` does. The reference is the fp32 path as taskloom
serves it: the ONNX export of `taskloom.serve.onnx_runtime.export_encoder` run by its `session()`
(sleeping idle threads, full graph optimisation). Candidates:
- OpenVINO compiling the same ONNX file, INFERENCE_PRECISION_HINT bf16 (AMX) and f32 (reference),
  PERFORMANCE_HINT LATENCY (one request at a time, as a Triton instance calls) or THROUGHPUT (as many
  streams as it picks, batches in flight together: what several instances would get);
- PyTorch bf16: taskloom's current bf16 path (Linear weights in bf16, autocast), eager and under
  torch.compile (inductor, frozen weights, dynamic shapes);
- ONNX Runtime static int8 (QDQ, per-channel weights, MatMul only), calibrated on 128 held-out
  reviews (the train split), with the same session options.
Rounds are interleaved (A B C .. A B C ..) and the median texts/s of `--rounds` is reported, with the
minimum cosine per text against the fp32 reference (the bar is 0.995). Also measured in the same run:
torch's fp32 and bf16 matmul GFLOP/s at the FFN's shape (32x128 tokens x 384 @ 384 x 1536). The last
line is `ratio: X`, the best candidate's texts/s over the fp32 reference's, among those at the bar.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_WAIT_POLICY": "PASSIVE",
}.items():
    os.environ.setdefault(_k, _v)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peak import matmul_gflops  # noqa: E402

BAR = 0.995
BATCH = 32
MAX_LENGTH = 128
CANDIDATES = (
    "ov-f32-latency",
    "ov-bf16-latency",
    "ov-bf16-throughput",
    "torch-bf16-eager",
    "torch-bf16-compile",
    "ort-int8-qdq",
)

Batch = dict[str, np.ndarray]


def texts_and_calibration(n: int, n_calib: int) -> tuple[list[str], list[str]]:
    """n eval reviews (in their fixed order) to measure; n_calib train reviews to calibrate int8 on."""
    from taskloom.tasks.catalog import build_task

    _, train, eval_ = build_task("rt-sentiment")
    return [r["text"] for r in eval_[:n]], [r["text"] for r in train[:n_calib]]


def batches(tok, texts: list[str], names: list[str]) -> list[Batch]:
    """Length-sorted batches of BATCH texts, each padded to its longest row (int64, as the backend feeds)."""
    enc = tok(texts, truncation=True, max_length=MAX_LENGTH)
    order = sorted(range(len(texts)), key=lambda i: len(enc["input_ids"][i]))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = []
    for s in range(0, len(order), BATCH):
        rows = order[s : s + BATCH]
        width = max(len(enc["input_ids"][i]) for i in rows)
        out.append(
            {
                k: np.array(
                    [enc[k][i] + [pad if k == "input_ids" else 0] * (width - len(enc[k][i])) for i in rows],
                    dtype=np.int64,
                )
                for k in names
            }
        )
    return out


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean pool over real tokens + L2 normalise, with the backend's own functions."""
    import torch
    import torch.nn.functional as F

    from taskloom.models.encoder import mean_pool

    h = torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32))
    return F.normalize(mean_pool(h, torch.from_numpy(mask)), dim=-1).numpy()


def ort_fp32(onnx_path: Path, threads: int) -> Callable[[list[Batch]], np.ndarray]:
    from taskloom.serve.onnx_runtime import session

    sess = session(onnx_path, threads)
    names = [i.name for i in sess.get_inputs()]
    return lambda bs: np.concatenate(
        [pooled(sess.run(None, {k: b[k] for k in names})[0], b["attention_mask"]) for b in bs]
    )


OPENVINO = Path(__file__).resolve().parents[1] / ".cache" / "bench-openvino"
OPENVINO_PINS = ["openvino==2026.4.1", "openvino-telemetry==2025.2.0"]


def ensure_openvino() -> None:
    """OpenVINO in .cache/bench-openvino (a benchmark candidate only, never a taskloom dependency):
    installed there on first run without its dependencies (numpy and packaging come from .venv)."""
    if not (OPENVINO / "openvino").is_dir():
        print(f"installing {' '.join(OPENVINO_PINS)} into {OPENVINO} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(OPENVINO),
                        *OPENVINO_PINS], check=True)
    if str(OPENVINO) not in sys.path:
        sys.path.append(str(OPENVINO))


def openvino(onnx_path: Path, threads: int, precision: str, hint: str) -> Callable[[list[Batch]], np.ndarray]:
    ensure_openvino()
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(onnx_path)),
        "CPU",
        {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint, "INFERENCE_NUM_THREADS": threads},
    )
    names = [p.get_any_name() for p in compiled.inputs]
    if hint == "LATENCY":
        req = compiled.create_infer_request()

        def run(bs: list[Batch]) -> np.ndarray:
            out = []
            for b in bs:
                req.infer({k: b[k] for k in names})
                out.append(pooled(req.get_output_tensor(0).data, b["attention_mask"]))
            return np.concatenate(out)

        return run

    streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, streams)
    results: dict[int, np.ndarray] = {}

    def done(req, i):
        results[i] = pooled(req.get_output_tensor(0).data, bs_now[i]["attention_mask"])

    queue.set_callback(done)
    bs_now: list[Batch] = []

    def run_many(bs: list[Batch]) -> np.ndarray:
        bs_now[:] = bs
        results.clear()
        for i, b in enumerate(bs):
            queue.start_async({k: b[k] for k in names}, i)
        queue.wait_all()
        return np.concatenate([results[i] for i in range(len(bs))])

    print(f"  openvino {precision} THROUGHPUT: {streams} infer requests", flush=True)
    return run_many


def torch_bf16(weights: Path, compiled: bool) -> Callable[[list[Batch]], np.ndarray]:
    """taskloom's bf16 path (EncoderBackend precision bf16): Linear weights in bf16 under autocast."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(weights).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.to(torch.bfloat16)
    fwd: Callable = model
    if compiled:
        import torch._inductor.config as inductor

        inductor.freezing = True
        fwd = torch.compile(model, dynamic=True)

    def run(bs: list[Batch]) -> np.ndarray:
        out = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            for b in bs:
                h = fwd(**{k: torch.from_numpy(v) for k, v in b.items()}).last_hidden_state.float()
                out.append(pooled(h.numpy(), b["attention_mask"]))
        return np.concatenate(out)

    return run


def ort_int8(onnx_path: Path, threads: int, calib: list[Batch], workdir: Path) -> Callable[[list[Batch]], np.ndarray]:
    """Static QDQ int8 (per-channel symmetric weights, uint8 activations) of the MatMuls, calibrated on `calib`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, out = workdir / "pre.onnx", workdir / "int8.onnx"
    quant_pre_process(str(onnx_path), str(pre), skip_symbolic_shape=True)
    names = list(calib[0])

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {k: b[k] for k in names}

    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return ort_fp32(out, threads)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidates")
    args = ap.parse_args(argv)
    only = [c for c in args.only.split(",") if c]
    unknown = sorted(set(only) - set(CANDIDATES))
    if unknown:
        print(f"error: unknown candidates {unknown}: use {list(CANDIDATES)}", file=sys.stderr)
        return 2

    import torch
    from transformers import AutoTokenizer

    from taskloom.models.registry import resolve_base
    from taskloom.serve.onnx_runtime import export_encoder, input_names

    torch.set_num_threads(args.threads)
    weights = resolve_base("minilm")
    tok = AutoTokenizer.from_pretrained(weights)
    names = input_names(tok)
    texts, calib_texts = texts_and_calibration(args.texts, 128)
    data, calib = batches(tok, texts, names), batches(tok, calib_texts, names)
    tokens = sum(int(b["attention_mask"].sum()) for b in data)
    print(f"{len(texts)} texts, {tokens / len(texts):.1f} tokens each, {len(data)} batches of {BATCH}; "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_encoder(weights, Path(tmp) / "model.onnx")
        engines: dict[str, Callable[[list[Batch]], np.ndarray]] = {"ort-fp32": ort_fp32(onnx_path, args.threads)}
        builders: dict[str, Callable[[], Callable[[list[Batch]], np.ndarray]]] = {
            "ov-f32-latency": lambda: openvino(onnx_path, args.threads, "f32", "LATENCY"),
            "ov-bf16-latency": lambda: openvino(onnx_path, args.threads, "bf16", "LATENCY"),
            "ov-bf16-throughput": lambda: openvino(onnx_path, args.threads, "bf16", "THROUGHPUT"),
            "torch-bf16-eager": lambda: torch_bf16(weights, compiled=False),
            "torch-bf16-compile": lambda: torch_bf16(weights, compiled=True),
            "ort-int8-qdq": lambda: ort_int8(onnx_path, args.threads, calib, Path(tmp)),
        }
        for name in only:
            t0 = time.perf_counter()
            try:
                engines[name] = builders[name]()
            except Exception as e:  # a candidate that does not build here is reported, not fatal
                print(f"  {name}: not built: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                continue
            print(f"  {name}: built in {time.perf_counter() - t0:.1f} s", flush=True)

        reference = engines["ort-fp32"](data)
        cosines = {}
        for name, run in engines.items():  # warm-up pass (every shape once) and the accuracy check
            emb = run(data)
            cosines[name] = float(np.min(np.sum(emb * reference, axis=1)))
        rates: dict[str, list[float]] = {name: [] for name in engines}
        loads, gflops32, gflops16 = [], [], []
        for r in range(args.rounds):
            loads.append(os.getloadavg()[0])
            gflops32.append(matmul_gflops(torch.float32, BATCH * MAX_LENGTH, 384, 1536))
            gflops16.append(matmul_gflops(torch.bfloat16, BATCH * MAX_LENGTH, 384, 1536))
            for name, run in engines.items():
                t0 = time.perf_counter()
                run(data)
                rates[name].append(len(texts) / (time.perf_counter() - t0))
            print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in rates.items()), flush=True)

    base = statistics.median(rates["ort-fp32"])
    print(f"\nload average per round: {', '.join(f'{x:.2f}' for x in loads)}")
    print(f"torch matmul (32x128x384 @ 384x1536), {args.threads} threads, median GFLOP/s: "
          f"fp32 {statistics.median(gflops32):.1f}, bf16 {statistics.median(gflops16):.1f} "
          f"(bf16/fp32 {statistics.median(gflops16) / statistics.median(gflops32):.2f}x)")
    print(f"\n| engine | texts/s (median of {args.rounds}) | rounds | vs fp32 ORT | min cosine vs fp32 |")
    print("|---|---|---|---|---|")
    for name, v in rates.items():
        med = statistics.median(v)
        print(f"| {name} | {med:.1f} | {' '.join(f'{x:.0f}' for x in v)} | {med / base:.2f} | {cosines[name]:.6f} |")
    ok = [statistics.median(rates[n]) for n in engines if n != "ort-fp32" and cosines[n] >= BAR]
    best = max(ok, default=0.0)
    print(f"\nbest candidate at min cosine >= {BAR}: {best:.1f} texts/s against fp32 ORT's {base:.1f}")
    print(f"ratio: {best / base:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
