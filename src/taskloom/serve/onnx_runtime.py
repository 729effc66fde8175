"""The encoder as an ONNX graph run by ONNX Runtime: serving's fp32 fast path.

Why: on this 2-core CPU, ONNX Runtime runs MiniLM's float32 forward pass 1.8-2x faster than PyTorch
eager with the same numbers (cosine 1.000000 per text). Its intra-op threads must not spin-wait:
with spinning on, they steal the cores that Triton's other threads (and other instances) need, and
the gain falls to 1.1-1.5x. The graph holds the body only (tokens → last hidden state); tokenizing,
length-sorted chunks, mean pooling, normalisation and heads stay in backend.py, shared with torch.

An export is a pure function of the weights: it is kept once per weights digest under
`$TASKLOOM_CACHE/onnx/`, so building many repositories of one model exports once. The cache keeps
the CACHE_KEEP exports used last (each is the size of the model: 90 MB for MiniLM); every merge or
retrain makes new weights, and an unbounded cache would fill the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from taskloom.artifacts import sha256_file
from taskloom.errors import UserError
from taskloom.models.cache import cache_root

OPSET = 17
CACHE_KEEP = 8
OUTPUT = "last_hidden_state"


def input_names(tokenizer) -> list[str]:
    """The graph's inputs: what the tokenizer produces, in a fixed order."""
    produced = tokenizer("x")
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in produced]


def export_encoder(weights_dir: Path, out_file: Path) -> Path:
    """Write the encoder at `weights_dir` as ONNX to `out_file` (atomically; reused from the cache)."""
    import shutil

    weights_dir, out_file = Path(weights_dir), Path(out_file)
    digest = "-".join(sha256_file(f)[:16] for f in sorted(weights_dir.glob("*.safetensors")))
    cached = cache_root() / "onnx" / f"{digest}.onnx"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    while True:
        if not cached.exists():
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            try:
                _export(weights_dir, tmp)
                os.replace(tmp, cached)
            finally:
                tmp.unlink(missing_ok=True)
        try:
            os.utime(cached)  # used now: the prune keeps it
            shutil.copyfile(cached, out_file)
            break
        except FileNotFoundError:
            if cached.exists():
                raise
            continue  # another process pruned it just now: export again
    prune_cache(cached.parent)
    return out_file


def prune_cache(folder: Path, keep: int = CACHE_KEEP, now: float | None = None) -> list[Path]:
    """Remove all but the `keep` exports used last, and partial exports over an hour old (a killed
    export); returns what was removed. Another process may prune at the same time: a file already
    gone is not an error."""
    import time

    def used(p: Path) -> float | None:
        try:
            return p.stat().st_mtime
        except FileNotFoundError:
            return None

    now = time.time() if now is None else now
    entries = sorted(((t, p) for p in folder.glob("*.onnx") if (t := used(p)) is not None), reverse=True)
    partial = [p for p in folder.glob(".*.onnx.*.tmp") if (t := used(p)) is not None and now - t > 3600]
    removed = [p for _, p in entries[keep:]] + partial
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def _export(weights_dir: Path, path: Path) -> None:
    import warnings

    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(weights_dir)
    model = AutoModel.from_pretrained(weights_dir, attn_implementation="eager").eval()
    names = input_names(tok)

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    sample = tok(["a sample review to trace", "short"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, OUTPUT]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Body(),
            tuple(sample[n] for n in names),
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session over the exported graph; idle threads sleep instead of spinning."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(
            "engine onnxruntime: the onnxruntime package is not installed here (run `make setup`)"
        ) from None
    if not Path(path).exists():
        raise UserError(f"{path}: missing (the version was built for the onnxruntime engine)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or 0)  # 0: one per physical core
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
