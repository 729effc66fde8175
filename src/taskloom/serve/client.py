"""A thin client for taskloom models on Triton, over `tritonclient` HTTP or gRPC.

    client = TritonClient("http://127.0.0.1:8000")            # or TritonClient("127.0.0.1:8001", protocol="grpc")
    out = client.infer(["a fine film", "a dull film"])       # {"embedding": (2, 384), "label": [...], "probs": ...}

TEXT goes as BYTES (an object array of UTF-8 bytes, shape [n, 1]). A server that is not (yet)
reachable is retried with backoff; any other failure becomes a one-line UserError naming the model.
tritonclient's HTTP client is gevent-based: use one TritonClient per thread (or gRPC).
"""

from __future__ import annotations

import time

import numpy as np

from taskloom.errors import UserError

PROTOCOLS = ("http", "grpc")
UNAVAILABLE = ("StatusCode.UNAVAILABLE",)


def _host_port(url: str) -> str:
    """tritonclient wants host:port; accept http://, grpc:// and a trailing slash too."""
    for scheme in ("http://", "https://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    return url.rstrip("/")


class TritonClient:
    """Infer texts on one Triton model; also health, metadata and model control (explicit mode)."""

    def __init__(self, url: str, model: str = "taskloom", protocol: str = "http", timeout: float = 30,
                 retries: int = 2, backoff: float = 0.2):
        if protocol not in PROTOCOLS:
            raise UserError(f"protocol {protocol!r}: use one of {list(PROTOCOLS)}")
        self.url, self.model, self.protocol, self.timeout = _host_port(url), model, protocol, float(timeout)
        self.retries, self.backoff = retries, backoff
        if protocol == "http":
            import tritonclient.http as lib

            self._client = lib.InferenceServerClient(self.url, connection_timeout=self.timeout,
                                                     network_timeout=self.timeout)
        else:
            import tritonclient.grpc as lib

            # never through an http_proxy from the environment: taskloom's servers are on loopback or in-cluster
            from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE

            self._client = lib.InferenceServerClient(self.url, channel_args=[
                ("grpc.enable_http_proxy", 0),
                ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ])
        self._lib = lib
        self._outputs: list[str] | None = None

    def __enter__(self) -> "TritonClient":
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
                raise UserError(f"{what} ({self.protocol}://{self.url}): {e.message() or status}") from None
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
        return self._call(f"model {model or self.model}", self._client.get_model_metadata, model or self.model, **kwargs)

    def repository_index(self) -> list[dict]:
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        index = self._call("repository index", self._client.get_model_repository_index, **kwargs)
        return index.get("models", []) if isinstance(index, dict) else list(index)

    # -- model control (server started with model_control="explicit") ----------------------------
    def load_model(self, model: str | None = None, config: str | None = None, files: dict | None = None) -> None:
        """Load (or reload) a model from the repository, or from `config` (JSON) + `files` not on disk."""
        self._call(f"load {model or self.model}", self._client.load_model, model or self.model, config=config, files=files)
        self._outputs = None

    def unload_model(self, model: str | None = None) -> None:
        self._call(f"unload {model or self.model}", self._client.unload_model, model or self.model)
        self._outputs = None

    # -- inference -------------------------------------------------------------------------------
    def output_names(self) -> list[str]:
        if self._outputs is None:
            self._outputs = [o["name"] for o in self.metadata().get("outputs", [])]
        return self._outputs

    def infer(self, texts: list[str] | str) -> dict:
        """{"embedding": (n, dim) float32, "label": list[str] | None, "probs": (n, k) float32 | None}."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise UserError("texts: expected a non-empty list of strings")
        data = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        inp = self._lib.InferInput("TEXT", list(data.shape), "BYTES")
        inp.set_data_from_numpy(data)
        names = self.output_names()
        if self.protocol == "http":
            outputs = [self._lib.InferRequestedOutput(n, binary_data=True) for n in names]
        else:
            outputs = [self._lib.InferRequestedOutput(n) for n in names]
        res = self._call(f"model {self.model}", self._client.infer, self.model, [inp], outputs=outputs)
        labels = res.as_numpy("LABEL") if "LABEL" in names else None
        return {
            "embedding": res.as_numpy("EMBEDDING"),
            "label": None if labels is None else [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in labels.reshape(-1)],
            "probs": res.as_numpy("PROBS") if "PROBS" in names else None,
        }


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
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "n": len(times)}
