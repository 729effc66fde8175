"""A thin client for taskloom models on Triton, over `tritonclient` HTTP or gRPC.

    client = TritonClient("http://127.0.0.1:8000")            # or TritonClient("127.0.0.1:8001", protocol="grpc")
    out = client.infer(["a fine film", "a dull film"])       # {"embedding": (2, 384), "label": [...], "probs": ...}
    out = client.infer(["a fine film"], adapter="rt-sentiment")  # one of the model's LoRA adapters

    taskloom infer "a fine film" --url http://127.0.0.1:8000 --adapter rt-sentiment

TEXT goes as BYTES (an object array of UTF-8 bytes, shape [n, 1]). A server that is not (yet)
reachable is retried with backoff; any other failure becomes a one-line UserError naming the model.
tritonclient's HTTP client is gevent-based: use one TritonClient per thread (or gRPC).
Model control (load, unload, repository index) carries the admin key header when a key is given or
set in $TASKLOOM_TRITON_ADMIN_KEY (see taskloom.serve.admin): a restricted server refuses it otherwise.
"""

from __future__ import annotations

import time

import numpy as np

from taskloom import requestlog
from taskloom.errors import UserError
from taskloom.serve.adapters import check_name
from taskloom.serve.admin import admin_headers, check_key, load_admin_key

PROTOCOLS = ("http", "grpc")
UNAVAILABLE = ("StatusCode.UNAVAILABLE",)


def _host_port(url: str) -> str:
    """tritonclient wants host:port; accept http://, grpc:// and a trailing slash too."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    return url.rstrip("/")


class TritonClient:
    """Infer texts on one Triton model; also health, metadata and model control (explicit mode)."""

    def __init__(
        self,
        url: str,
        model: str = "taskloom",
        protocol: str = "http",
        timeout: float = 30,
        retries: int = 2,
        backoff: float = 0.2,
        request_log=None,
        task: str | None = None,
        admin_key: str | None = None,
    ):
        """request_log: append every served text to this JSONL log (what `taskloom monitor` reads), under
        `task` (default: the adapter asked for, else the model name); for local runs: in a cluster the
        Triton model itself writes the log (taskloom.serve.requests_log). admin_key: sent with model control
        (default: $TASKLOOM_TRITON_ADMIN_KEY, none when unset)."""
        if protocol not in PROTOCOLS:
            raise UserError(f"protocol {protocol!r}: use one of {list(PROTOCOLS)}")
        check_name(model, "model name")  # it becomes a URL path: /v2/models/<model>/...
        self.url, self.model, self.protocol, self.timeout = _host_port(url), model, protocol, float(timeout)
        self.retries, self.backoff = retries, backoff
        self.request_log, self.task = request_log, task
        self.admin_key = check_key(admin_key) if admin_key else load_admin_key()
        self._admin = admin_headers(self.admin_key, protocol)
        if protocol == "http":
            import tritonclient.http as lib

            self._client = lib.InferenceServerClient(
                self.url, connection_timeout=self.timeout, network_timeout=self.timeout
            )
        else:
            import tritonclient.grpc as lib

            # never through an http_proxy from the environment: taskloom's servers are on loopback or in-cluster
            from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE

            self._client = lib.InferenceServerClient(
                self.url,
                channel_args=[
                    ("grpc.enable_http_proxy", 0),
                    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
                ],
            )
        self._lib = lib
        self._outputs: list[str] | None = None

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None  # collected now, not at interpreter exit (where tritonclient's __del__ fails)

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one tritonclient call: retry while the server is unreachable, else one clear error."""
        from tritonclient.utils import InferenceServerException

        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout)
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except InferenceServerException as e:
                status = str(e.status() or "")
                if status in UNAVAILABLE and attempt < self.retries:
                    time.sleep(self.backoff * 2**attempt)
                    continue
                message = e.message() or status
                if "restricted" in message.lower():  # Triton guards this API with the admin key header
                    message += (
                        " (model control is restricted: set TASKLOOM_TRITON_ADMIN_KEY or give --admin-key-file)"
                        if self._admin is None
                        else " (the admin key given was refused)"
                    )
                raise UserError(f"{what} ({self.protocol}://{self.url}): {message}") from None
            except (ConnectionError, TimeoutError, OSError) as e:
                if attempt < self.retries and not isinstance(e, TimeoutError):
                    time.sleep(self.backoff * 2**attempt)
                    continue
                raise UserError(f"{what} ({self.protocol}://{self.url}): {type(e).__name__}: {e}") from None

    # -- health and metadata ---------------------------------------------------------------------
    def is_server_ready(self) -> bool:
        try:
            return bool(self._call("server ready", self._client.is_server_ready))
        except UserError:
            return False

    def is_model_ready(self, model: str | None = None) -> bool:
        try:
            return bool(self._call("model ready", self._client.is_model_ready, model or self.model))
        except UserError:
            return False

    def metadata(self, model: str | None = None) -> dict:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        return self._call(
            f"model {model or self.model}", self._client.get_model_metadata, model or self.model, **kwargs
        )

    def repository_index(self) -> list[dict]:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        index = self._call("repository index", self._client.get_model_repository_index, headers=self._admin, **kwargs)
        return index.get("models", []) if isinstance(index, dict) else list(index)

    # -- model control (server started with model_control="explicit") ----------------------------
    def load_model(self, model: str | None = None, config: str | None = None, files: dict | None = None) -> None:
        """Load (or reload) a model from the repository, or from `config` (JSON) + `files` not on disk."""
        self._call(
            f"load {model or self.model}",
            self._client.load_model,
            model or self.model,
            headers=self._admin,
            config=config,
            files=files,
        )
        self._outputs = None

    def unload_model(self, model: str | None = None) -> None:
        self._call(f"unload {model or self.model}", self._client.unload_model, model or self.model, headers=self._admin)
        self._outputs = None

    # -- inference -------------------------------------------------------------------------------
    def output_names(self) -> list[str]:
        if self._outputs is None:
            self._outputs = [o["name"] for o in self.metadata().get("outputs", [])]
        return self._outputs

    def infer(self, texts: list[str] | str, adapter: str | None = None) -> dict:
        """{"embedding": (n, dim) float32, "label": list[str] | None, "probs": (n, k) float32 | None}.

        adapter: a LoRA adapter the model serves (the `adapter` request parameter); None = the base.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise UserError("texts: expected a non-empty list of strings")
        if adapter is not None and not isinstance(adapter, str):
            raise UserError(f"adapter {adapter!r}: expected a name")
        data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        inp = self._lib.InferInput("TEXT", list(data.shape), "BYTES")
        inp.set_data_from_numpy(data)
        names = self.output_names()
        if self.protocol == "http":
            outputs = [self._lib.InferRequestedOutput(n, binary_data=True) for n in names]
        else:
            outputs = [self._lib.InferRequestedOutput(n) for n in names]
        params = {"adapter": adapter} if adapter else None
        res = self._call(
            f"model {self.model}" + (f" adapter {adapter}" if adapter else ""),
            self._client.infer,
            self.model,
            [inp],
            outputs=outputs,
            parameters=params,
        )
        if self.request_log is not None:
            requestlog.append(self.request_log, self.task or adapter or self.model, texts)
        labels = res.as_numpy("LABEL") if "LABEL" in names else None
        probs = res.as_numpy("PROBS") if "PROBS" in names else None
        if labels is not None:
            labels = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in labels.reshape(-1)]
            if not any(labels):  # a multi-adapter model: this adapter (or the base) has no head
                labels, probs = None, None
        return {
            "embedding": res.as_numpy("EMBEDDING"),
            "label": labels,
            "probs": None if probs is None or probs.size == 0 else probs,
        }

    def infer_batched(self, texts: list[str], adapter: str | None = None, batch_size: int = 32) -> dict:
        """`infer` over any number of texts, `batch_size` per request (keep it <= the model's max_batch_size)."""
        if not texts:
            raise UserError("texts: expected a non-empty list of strings")
        if batch_size < 1:
            raise UserError(f"batch_size {batch_size}: must be at least 1")
        parts = [self.infer(texts[i : i + batch_size], adapter) for i in range(0, len(texts), batch_size)]
        labels = None if parts[0]["label"] is None else [lab for p in parts for lab in p["label"]]
        probs = None if parts[0]["probs"] is None else np.concatenate([p["probs"] for p in parts])
        return {"embedding": np.concatenate([p["embedding"] for p in parts]), "label": labels, "probs": probs}


def measure_latency(client: TritonClient, texts: list[str], warmup: int = 3) -> dict:
    """Round-trip latency of one-text requests sent one after another: p50/p99 in milliseconds."""
    if not texts:
        raise UserError("measure_latency: no texts")
    for t in texts[:warmup]:
        client.infer([t])
    times = []
    for t in texts:
        t0 = time.perf_counter()
        client.infer([t])
        times.append((time.perf_counter() - t0) * 1000)
    ms = np.asarray(times)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "n": len(times),
    }


def read_texts(path, field: str = "text") -> list[str]:
    """Texts from a JSONL file (one object per line, `field` a non-empty string); errors name the row."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    texts = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{path}: row {i}: not valid JSON ({e.args[0] if e.args else e})") from None
            value = row.get(field) if isinstance(row, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"{path}: row {i}: field {field!r}: expected a non-empty string")
            texts.append(value)
    if not texts:
        raise UserError(f"{path}: no rows")
    return texts


def infer_texts(
    url: str,
    texts: list[str] | None = None,
    file=None,
    *,
    field: str = "text",
    model: str = "taskloom",
    protocol: str = "http",
    adapter: str | None = None,
    batch_size: int = 32,
    timeout: float = 30,
    embeddings: bool = True,
) -> dict:
    """`taskloom infer`: texts given or read from a JSONL file → {"model", "adapter", "n", "results": [...]}."""
    texts = list(texts or [])
    if file is not None:
        texts += read_texts(file, field)
    if not texts:
        raise UserError("give texts as arguments or --file FILE.jsonl")
    for i, t in enumerate(texts):
        if not t.strip():
            raise UserError(f"text {i}: empty")
    with TritonClient(url, model=model, protocol=protocol, timeout=timeout) as client:
        out = client.infer_batched(texts, adapter=adapter, batch_size=batch_size)
    results = []
    for i, text in enumerate(texts):
        row: dict[str, object] = {"text": text}
        if out["label"] is not None:
            row["label"] = out["label"][i]
            row["probs"] = [round(float(p), 6) for p in out["probs"][i]]
        if embeddings:
            row["embedding"] = [round(float(x), 6) for x in out["embedding"][i]]
        results.append(row)
    return {
        "model": model,
        "adapter": adapter,
        "n": len(texts),
        "dim": int(out["embedding"].shape[1]),
        "results": results,
    }
