"""What the Triton python backend runs: texts in, embeddings (and head outputs) out, as numpy.

serving/model.py is a thin adapter around `EncoderBackend`; keeping the logic here lets the platform
test it in-process and keeps the numbers identical to `taskloom.models.encoder` (mean pool over real
tokens, L2 normalisation). One dynamic batch of many requests runs as few forward passes as possible,
with texts sorted by token length and cut into chunks that waste little on padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from taskloom.errors import UserError

MAX_TEXT_CHARS = 100_000
CHUNK_OVERHEAD_TOKENS = 192  # a forward pass costs about as much as this many extra padded tokens


def plan_chunks(lengths: list[int], overhead: int = CHUNK_OVERHEAD_TOKENS, max_chunk: int = 256) -> list[tuple[int, int]]:
    """Cut lengths sorted ascending into [start, end) chunks minimising Σ(n·max_len + overhead).

    Exact dynamic programme, O(n²) on at most a batch of texts: cheaper than one wasted forward.
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - max_chunk), end):
            cost = best[start] + (end - start) * lengths[end - 1] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    chunks, end = [], n
    while end > 0:
        chunks.append((cut[end], end))
        end = cut[end]
    return chunks[::-1]


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
    """Tokenizer + encoder (+ classification head) loaded once per Triton model instance."""

    def __init__(self, weights_dir, head_dir=None, max_length: int = 128, threads: int | None = None,
                 chunk_overhead: int = CHUNK_OVERHEAD_TOKENS, verify: bool = True):
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from taskloom.artifacts import verify_digest

        hf_logging.disable_progress_bar()
        weights_dir = Path(weights_dir)
        if verify:
            for f in sorted(weights_dir.glob("*.safetensors")):
                if f.with_name(f.name + ".sha256").exists() and not verify_digest(f):
                    raise UserError(f"{f}: sha256 does not match {f.name}.sha256 (corrupted or replaced file)")
        if threads:
            torch.set_num_threads(threads)
        self.max_length = max_length
        self.chunk_overhead = chunk_overhead
        self.tok = AutoTokenizer.from_pretrained(weights_dir)
        self.model = AutoModel.from_pretrained(weights_dir).eval()
        self.dim = int(self.model.config.hidden_size)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.head, self.labels = None, None
        if head_dir:
            from taskloom.train.heads import load_head

            self.head, self.labels = load_head(head_dir)
            self.head.eval()

    @classmethod
    def from_triton(cls, version_dir, model_config: dict) -> "EncoderBackend":
        """Build from the model's version folder and its config.pbtxt parameters (as Triton gives them)."""
        params = {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}
        version_dir = Path(version_dir)
        head = params.get("head") or None
        return cls(
            version_dir / params.get("weights", "weights"),
            head_dir=version_dir / head if head else None,
            max_length=int(params.get("max_length", 128)),
            threads=int(params["threads"]) if params.get("threads") else None,
            chunk_overhead=int(params.get("chunk_overhead", CHUNK_OVERHEAD_TOKENS)),
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised; same numbers as taskloom.models.encoder.embed_texts."""
        import torch
        import torch.nn.functional as F

        from taskloom.models.encoder import mean_pool

        enc = self.tok(texts, truncation=True, max_length=self.max_length)
        ids = enc["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
        lengths = [len(ids[i]) for i in order]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        with torch.inference_mode():
            for start, end in plan_chunks(lengths, self.chunk_overhead):
                rows, width = order[start:end], lengths[end - 1]
                batch = {}
                for k in keys:
                    fill = self.pad_id if k == "input_ids" else 0
                    batch[k] = torch.tensor([enc[k][i] + [fill] * (width - len(enc[k][i])) for i in rows])
                hidden = self.model(**batch).last_hidden_state
                emb = F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
                out[rows] = emb.float().numpy()
        return out

    def infer(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Output tensors by Triton name: EMBEDDING, and LABEL + PROBS when a head is served."""
        emb = self.embed(texts)
        result = {"EMBEDDING": emb}
        if self.head is not None:
            import torch

            with torch.inference_mode():
                probs = torch.softmax(self.head(torch.from_numpy(emb)), dim=-1).numpy().astype(np.float32)
            result["PROBS"] = probs
            result["LABEL"] = np.array([[self.labels[j].encode("utf-8")] for j in probs.argmax(1)], dtype=object)
        return result

    def execute(self, inputs: list) -> list:
        """One Triton batch: a TEXT array per request → per request a dict of outputs, or an error str.

        A bad request fails alone; the others in the same dynamic batch still get their answers.
        """
        results: list = [None] * len(inputs)
        texts, spans = [], []
        for r, array in enumerate(inputs):
            try:
                rows = decode_texts(array)
            except ValueError as e:
                results[r] = str(e)
                continue
            spans.append((r, len(texts), len(texts) + len(rows)))
            texts.extend(rows)
        if texts:
            try:
                out = self.infer(texts)
            except Exception as e:  # the model itself failed: every request of the batch gets the reason
                for r, _, _ in spans:
                    results[r] = f"inference failed: {type(e).__name__}: {e}"
                return results
            for r, a, b in spans:
                results[r] = {k: v[a:b] for k, v in out.items()}
        return results

