"""What the Triton python backend runs: texts in, embeddings (and head outputs) out, as numpy.

taskloom/serve/triton/model.py is a thin adapter around `EncoderBackend`; keeping the logic here lets the platform
test it in-process and keeps the numbers identical to `taskloom.models.encoder` (mean pool over real
tokens, L2 normalisation). One dynamic batch of many requests runs as few forward passes as possible,
with texts sorted by token length and cut into chunks that waste little on padding. The body runs in
PyTorch (any precision, adapters) or, for one fp32 model without adapters, in ONNX Runtime
(serve/onnx_runtime.py: the same numbers, faster). Each batch served is what the model writes to the
request log (serve/requests_log.py) and counts in its served-requests metric (serve/triton/model.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from taskloom.artifacts import sha256_file, verify_digest
from taskloom.errors import UserError
from taskloom.models.chunks import by_length
from taskloom.models.encoder import hidden_size, mean_pool
from taskloom.models.heads import has_head, load_head
from taskloom.serve.lora import attach
from taskloom.serve.onnx_runtime import input_names, session
from taskloom.serve.requests_log import Served, ServedLog

MAX_TEXT_CHARS = 100_000
PRECISIONS = ("fp32", "bf16", "int8")
ENGINES = ("auto", "torch", "onnxruntime")  # auto: onnxruntime for fp32 without adapters, else torch
ONNX_FILE = "onnx/model.onnx"
CHUNK_OVERHEAD_TOKENS = 192  # an inference forward pass costs about as much as this many extra padded tokens
TRIM_INTERVAL_S = 1.0  # at most this often, memory freed by finished batches goes back to the OS


def resolve_engine(engine: str, precision: str, adapters: bool) -> str:
    """ "auto" → onnxruntime for one fp32 model without adapters (faster, same numbers), else torch."""
    if engine == "auto":
        return "onnxruntime" if precision == "fp32" and not adapters else "torch"
    if engine == "onnxruntime" and (precision != "fp32" or adapters):
        raise UserError("engine onnxruntime: serves one fp32 model without adapters (use engine torch or auto)")
    return engine


class MemoryTrim:
    """Give the memory freed by finished batches back to the OS (glibc `malloc_trim`), at most once per
    `interval` seconds; a no-op where libc has no malloc_trim.

    Why: each new (rows, tokens) shape adds a small long-lived entry to oneDNN's primitive cache (the
    GELU kernel in fp32, every matmul in bf16; up to 1024 entries), allocated among the large
    short-lived activation buffers of that batch. The entries pin the heap, so glibc can neither
    coalesce nor trim the freed buffers around them: the stub's RSS ratcheted up with every new mix of
    batch shapes (+15 % in a 200 s soak) while malloc's bytes in use grew ~9 MiB. malloc_trim also
    releases free pages inside the heap. Turning the cache off (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0)
    flattens RSS as well, but bf16 matmuls would then be re-generated on every call (~2.7 ms each).
    """

    def __init__(self, interval: float = TRIM_INTERVAL_S):
        import ctypes
        import ctypes.util

        self.interval = interval
        self.last = time.monotonic()
        self.trims = 0
        self._trim: Callable[[int], int] | None
        try:
            trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
            self._trim = trim
        except (OSError, AttributeError):
            self._trim = None

    def __call__(self, force: bool = False) -> bool:
        """Trim when `interval` seconds have passed since the last trim (or when forced); True if it ran."""
        now = time.monotonic()
        if self._trim is None or (not force and now - self.last < self.interval):
            return False
        self._trim(0)
        self.last, self.trims = now, self.trims + 1
        return True


def decode_texts(array) -> list[str]:
    """TEXT tensor (bytes objects, shape [n, 1]) → list of str; bad rows raise ValueError naming the row."""
    texts = []
    for i, item in enumerate(np.asarray(array, dtype=object).reshape(-1)):
        if isinstance(item, (bytes, bytearray, np.bytes_)):
            try:
                item = bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"TEXT row {i}: not valid UTF-8") from None
        if not isinstance(item, str):
            raise ValueError(f"TEXT row {i}: expected a string, got {type(item).__name__}")
        if not item.strip():
            raise ValueError(f"TEXT row {i}: empty text")
        if len(item) > MAX_TEXT_CHARS:
            raise ValueError(f"TEXT row {i}: {len(item)} characters, more than {MAX_TEXT_CHARS}")
        texts.append(item)
    return texts


class EncoderBackend:
    """Tokenizer + encoder (+ classification heads, + LoRA adapters) loaded once per Triton model instance.

    Adapters stay unmerged beside one copy of the base (`taskloom.serve.lora`): each request names its
    adapter (or none, the base), and one forward pass serves a chunk mixing adapters, each adapter's
    LoRA delta applied to its own rows only.
    """

    def __init__(
        self,
        weights_dir,
        head_dir=None,
        max_length: int = 128,
        threads: int | None = None,
        chunk_overhead: int = CHUNK_OVERHEAD_TOKENS,
        verify: bool = True,
        adapters: dict | None = None,
        precision: str = "fp32",
        onnx_file=None,
        *,
        name: str = "taskloom",
        version: str = "",
        tasks: dict | None = None,
        request_log: ServedLog | None = None,
    ):
        """name, version: the Triton model and version served; tasks: adapter name (None: the base) → the
        task its requests are for (default: the adapter's name, the model's name for the base);
        request_log: where served requests are logged (None: nowhere)."""
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        weights_dir = Path(weights_dir)
        if not any(weights_dir.glob("*.safetensors")):
            raise UserError(f"{weights_dir}: no safetensors weights")
        if verify:
            for f in sorted(weights_dir.glob("*.safetensors")):
                if f.with_name(f.name + ".sha256").exists() and not verify_digest(f):
                    raise UserError(f"{f}: sha256 does not match {f.name}.sha256 (corrupted or replaced file)")
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: use one of {list(PRECISIONS)}")
        if onnx_file is not None:
            resolve_engine("onnxruntime", precision, adapters is not None)  # refuses adapters and bf16/int8
        if threads:
            torch.set_num_threads(threads)
        self.name, self.version, self.tasks, self.request_log = name, str(version), dict(tasks or {}), request_log
        self.max_length = max_length
        self.chunk_overhead = chunk_overhead
        self.precision = precision
        self.tok = AutoTokenizer.from_pretrained(weights_dir)
        self.session = None
        model: Any  # a transformers model, or None when ONNX Runtime runs the body
        if onnx_file is not None:  # the body runs in ONNX Runtime; no torch copy of the weights is kept
            self.session, self.inputs = session(onnx_file, threads), input_names(self.tok)
            model = None
            self.dim = hidden_size(weights_dir)
        else:
            model = AutoModel.from_pretrained(weights_dir).eval()
            self.dim = int(model.config.hidden_size)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.multi = adapters is not None
        self.adapters = sorted(adapters or {})
        self.heads: dict = {}  # adapter name (None: the base) -> (Linear, labels)
        if head_dir:
            self.heads[None] = load_head(head_dir)
        self.router = None
        if adapters is not None and self.adapters:
            self.router = attach(model, {name: adapters[name] for name in self.adapters})
            for name in self.adapters:
                if has_head(adapters[name]):
                    self.heads[name] = load_head(adapters[name])
        for head, _ in self.heads.values():
            head.eval()
        if (
            precision == "bf16"
        ):  # Linear weights stored once in bf16; autocast (in embed) keeps LayerNorm and softmax in fp32
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    m.to(torch.bfloat16)
        if precision == "int8":  # dynamic int8 on the frozen Linear layers; LoRA factors stay float32
            from torch.ao.quantization import quantize_dynamic

            names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in n}
            model = quantize_dynamic(model, names, dtype=torch.qint8)
        self.model = model
        # the first forward pass of a process is slow (lazy kernels, PEFT hooks): pay it while loading,
        # so that the first requests after a hot swap are not
        self.embed(["warm up"] * (len(self.adapters) + 1), [None, *self.adapters])
        self.trim = MemoryTrim()
        self.trim(force=True)  # what loading freed (state dicts, tokenizer files) goes back now

    @property
    def head(self):
        """The base's head (Linear) or None."""
        return self.heads[None][0] if None in self.heads else None

    @property
    def labels(self):
        return self.heads[None][1] if None in self.heads else None

    @classmethod
    def from_triton(cls, version_dir, model_config: dict) -> EncoderBackend:
        """Build from the model's version folder and its config.pbtxt parameters (as Triton gives them).

        Every file the version's manifest lists is checked against its sha256 first: a version whose
        files were changed after publishing fails to load (and Triton keeps serving the old one).
        The request log is configured by the server's environment (`taskloom.serve.requests_log`); the task
        of a request is its adapter's task, or the base's head task, from the manifest.
        """
        params = {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}
        version_dir = Path(version_dir)
        verify_manifest(version_dir)
        head = params.get("head") or None
        adapters = None
        manifest_path = version_dir / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if params.get("adapters") is not None and manifest.get("adapters") is not None:
            folder = version_dir / (params.get("adapters") or "adapters")
            adapters = {name: folder / name for name in manifest["adapters"]}
        name = str(model_config.get("name") or manifest.get("name") or "taskloom")
        tasks: dict[str | None, str | None] = {None: manifest.get("head_task")}
        tasks.update({a: (info or {}).get("task") for a, info in (manifest.get("adapters") or {}).items()})
        request_log = ServedLog.from_env(name, version_dir.name)  # before loading: a bad setting fails fast
        return cls(
            version_dir / params.get("weights", "weights"),
            head_dir=version_dir / head if head else None,
            max_length=int(params.get("max_length", 128)),
            threads=int(params["threads"]) if params.get("threads") else None,
            chunk_overhead=int(params.get("chunk_overhead", CHUNK_OVERHEAD_TOKENS)),
            adapters=adapters,
            precision=params.get("precision") or "fp32",
            onnx_file=version_dir / ONNX_FILE if params.get("engine") == "onnxruntime" else None,
            name=name,
            version=version_dir.name,
            tasks=tasks,
            request_log=request_log,
        )

    def check_adapter(self, adapter) -> str | None:
        """None/"" (the base) or a served adapter name; anything else is a ValueError for that request."""
        if adapter is None or adapter == "":
            return None
        if not isinstance(adapter, str):
            raise ValueError(f"request parameter 'adapter': expected a string, got {type(adapter).__name__}")
        if adapter not in self.adapters:
            served = ", ".join(self.adapters) or "none"
            raise ValueError(
                f"adapter {adapter!r}: not served by this model (adapters: {served}; omit it for the base)"
            )
        return adapter

    def embed(self, texts: list[str], adapters: list | None = None) -> np.ndarray:
        """(n, dim) float32, L2-normalised; same numbers as taskloom.models.encoder.embed_texts (and as
        PeftModel with the row's adapter). adapters: per text an adapter name or None (the base)."""
        import contextlib

        import torch
        import torch.nn.functional as F

        names = [self.check_adapter(a) for a in adapters] if adapters is not None else [None] * len(texts)
        enc = self.tok(texts, truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in enc["input_ids"]]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else contextlib.nullcontext()
        with torch.inference_mode(), cast:
            for rows in by_length(lengths, self.chunk_overhead):
                width = max(lengths[i] for i in rows)
                batch = {}
                for k in keys:
                    fill = self.pad_id if k == "input_ids" else 0
                    batch[k] = np.array([enc[k][i] + [fill] * (width - len(enc[k][i])) for i in rows], dtype=np.int64)
                if self.session is not None:
                    hidden = torch.from_numpy(self.session.run(None, {k: batch[k] for k in self.inputs})[0])
                else:
                    if self.router is not None:
                        self.router.groups = route([names[i] for i in rows])
                    hidden = self.model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.float()
                emb = F.normalize(mean_pool(hidden, torch.from_numpy(batch["attention_mask"])), dim=-1)
                out[rows] = emb.numpy()
        return out

    def head_outputs(self, emb: np.ndarray, adapter: str | None) -> dict[str, np.ndarray]:
        """LABEL + PROBS from the head of `adapter` (None: the base's); empty ones in a multi-adapter
        model when that adapter has no head, nothing in a single model without a head."""
        if adapter not in self.heads:
            if not self.multi:
                return {}
            n = len(emb)
            return {"LABEL": np.full((n, 1), b"", dtype=object), "PROBS": np.zeros((n, 0), dtype=np.float32)}
        import torch

        head, labels = self.heads[adapter]
        with torch.inference_mode():
            probs = torch.softmax(head(torch.from_numpy(emb)), dim=-1).numpy().astype(np.float32)
        return {
            "PROBS": probs,
            "LABEL": np.array([[labels[j].encode("utf-8")] for j in probs.argmax(1)], dtype=object).reshape(-1, 1),
        }

    def infer(self, texts: list[str], adapter: str | None = None) -> dict[str, np.ndarray]:
        """Output tensors by Triton name: EMBEDDING, and LABEL + PROBS when the adapter (or base) has a head."""
        adapter = self.check_adapter(adapter)
        emb = self.embed(texts, [adapter] * len(texts))
        return {"EMBEDDING": emb, **self.head_outputs(emb, adapter)}

    def task_of(self, adapter: str | None) -> str:
        """The task a request for `adapter` (None: the base) is for, as the request log and the metric name it."""
        return self.tasks.get(adapter) or adapter or self.name

    def execute(self, inputs: list, adapters: list | None = None) -> list:
        """One Triton batch: a TEXT array (+ an adapter name) per request → per request a dict of
        outputs, or an error str. A bad request fails alone; the others in the same dynamic batch
        still get their answers, all computed in as few forward passes as the lengths allow.
        """
        return self.serve(inputs, adapters)[0]

    def serve(self, inputs: list, adapters: list | None = None) -> tuple[list, list[Served]]:
        """`execute`, plus what was served (per answered request: task, adapter, texts, head outputs),
        which is also appended to the request log when one is configured."""
        adapters = adapters if adapters is not None else [None] * len(inputs)
        results: list = [None] * len(inputs)
        texts: list[str] = []
        names: list[str | None] = []
        spans: list[tuple] = []
        for r, array in enumerate(inputs):
            try:
                adapter = self.check_adapter(adapters[r])
                rows = decode_texts(array)
            except ValueError as e:
                results[r] = str(e)
                continue
            spans.append((r, adapter, len(texts), len(texts) + len(rows)))
            texts.extend(rows)
            names.extend([adapter] * len(rows))
        if texts:
            try:
                emb = self.embed(texts, names)
                for r, adapter, a, b in spans:
                    results[r] = {"EMBEDDING": emb[a:b], **self.head_outputs(emb[a:b], adapter)}
            except Exception as e:  # the model itself failed: every request of the batch gets the reason
                for r, _, _, _ in spans:
                    results[r] = f"inference failed: {type(e).__name__}: {e}"
        served = [
            served_request(self.task_of(adapter), adapter, texts[a:b], results[r])
            for r, adapter, a, b in spans
            if isinstance(results[r], dict)
        ]
        if self.request_log is not None:
            self.request_log.record(served)
        self.trim()
        return results, served


def served_request(task: str, adapter: str | None, texts: list[str], outputs: dict) -> Served:
    """One answered request as the request log records it: LABEL decoded, PROBS kept (none without a head)."""
    labels = probs = None
    if "LABEL" in outputs:
        decoded = [bytes(x).decode("utf-8") for x in np.asarray(outputs["LABEL"]).reshape(-1)]
        if any(decoded):  # an adapter without a head in a multi-adapter model answers empty labels
            labels, probs = decoded, outputs.get("PROBS")
    return Served(task, adapter, texts, labels, probs)


def route(names: list) -> list:
    """Rows of one chunk grouped by adapter: [(name, row indices)], indices None when all rows share it."""
    import torch

    if len(set(names)) == 1:
        return [] if names[0] is None else [(names[0], None)]
    groups: dict = {}
    for i, name in enumerate(names):
        if name is not None:
            groups.setdefault(name, []).append(i)
    return [(name, torch.tensor(rows)) for name, rows in groups.items()]


def verify_manifest(version_dir: Path) -> None:
    """Every file listed in version_dir/manifest.json must exist with its recorded sha256."""
    path = Path(version_dir) / "manifest.json"
    if not path.exists():
        return
    files = json.loads(path.read_text()).get("files") or {}
    for rel, digest in sorted(files.items()):
        f = Path(version_dir) / rel
        if not f.is_file():
            raise UserError(f"{f}: listed in manifest.json but missing")
        if sha256_file(f) != digest:
            raise UserError(f"{f}: sha256 does not match manifest.json (corrupted or replaced file): refused")
