"""Triton requests to the taskloom model (MiniLM + two LoRA adapters): a real request, changed one way per
case (empty batch, 10k- and 200k-character texts, non-UTF-8 bytes, NUL bytes, blank texts, an unknown or
mistyped adapter, too many rows, a wrong shape or datatype). In-process against the Triton Python model's
request handling (`EncoderBackend.serve`: a bad request is answered with an error alone, its batch-mates
still get answers), then a smaller number against a real local Triton, which must answer each bad request
with an error and stay up."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TIERS, TIERS_E2E, Refused
from hypothesis import strategies as st
from mutations import Case
from serve_helpers import TEXTS

from taskloom.serve.backend import EncoderBackend
from taskloom.serve.launcher import TritonServer
from taskloom.serve.repository import build_repository

MAX_BATCH = 8
ADAPTERS = [None, "senti", "qa"]


@st.composite
def request_case(draw) -> Case:
    kind = draw(
        st.sampled_from(
            [
                "unchanged",
                "empty batch",
                "10k text",
                "200k text",
                "non-utf-8",
                "nul byte",
                "blank text",
                "unknown adapter",
                "adapter type",
                "too many rows",
                "wrong shape",
                "not bytes",
                "unicode text",
            ]
        )
    )
    n = draw(st.integers(min_value=1, max_value=4))
    texts = [t.encode() for t in draw(st.lists(st.sampled_from(TEXTS), min_size=n, max_size=n))]
    adapter = draw(st.sampled_from(ADAPTERS))
    at = draw(st.integers(min_value=0, max_value=n - 1))
    valid: bool | None = None
    if kind == "unchanged":
        valid = True
    elif kind == "empty batch":
        texts = []
    elif kind in ("10k text", "200k text"):
        texts[at] = ("word " * (2_000 if kind == "10k text" else 40_000)).encode()
        valid = kind == "10k text"
    elif kind == "non-utf-8":
        texts[at] = texts[at][:3] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) + texts[at][3:]
        valid = False
    elif kind == "nul byte":
        texts[at] = texts[at][:2] + b"\x00" + texts[at][2:]
    elif kind == "blank text":
        texts[at] = draw(st.sampled_from([b"", b" ", b"\n\t"]))
        valid = False
    elif kind == "unknown adapter":
        adapter = draw(st.sampled_from(["nope", "SENTI", "../senti", "senti\x00", "a" * 300, "__base__"]))
        valid = False
    elif kind == "adapter type":
        adapter = draw(st.sampled_from([3, 1.5, True, ["senti"], {"a": 1}]))
    elif kind == "too many rows":
        texts = texts * (MAX_BATCH + 1)
    elif kind == "unicode text":
        texts[at] = draw(st.text(min_size=1, max_size=200)).encode("utf-8", "surrogatepass")
    array = np.array([[t] for t in texts], dtype=object).reshape(len(texts), 1)
    if kind == "wrong shape":
        array = array.reshape(1, 1, -1)
    if kind == "not bytes":
        array = np.array([[draw(st.sampled_from([1, 2.5, None, b"ok"]))] for _ in texts], dtype=object)
    return Case(kind, (), array, valid=valid, extra={"adapter": adapter})


@pytest.fixture(scope="module")
def repo(real_adapters, tmp_path_factory):
    return build_repository("minilm", tmp_path_factory.mktemp("repo"), adapters=real_adapters, max_batch_size=MAX_BATCH)


@pytest.fixture(scope="module")
def backend(repo):
    cfg = {"parameters": {"weights": {"string_value": "weights"}, "adapters": {"string_value": "adapters"}}}
    return EncoderBackend.from_triton(repo / "taskloom" / "1", cfg)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    """One real tritonserver for the module, serving the base and both adapters."""
    with TritonServer(repo, log_dir=tmp_path_factory.mktemp("logs")) as s:
        yield s


def names(case, message: str) -> bool:
    return any(w in message for w in ("TEXT", "adapter", "batch", "shape", "input", "dims", "size"))


@pytest.mark.parametrize("tier", TIERS_E2E)
def test_triton_requests_in_process(fuzz, backend, tier):
    good = np.array([[TEXTS[0].encode()]], dtype=object)

    def check(case):
        out = backend.execute([case.doc, good], [case.extra["adapter"], "senti"])
        assert isinstance(out[1], dict) and out[1]["EMBEDDING"].shape == (1, 384)  # the batch-mate is answered
        if isinstance(out[0], str):
            raise Refused(out[0])
        assert isinstance(out[0], dict) and out[0]["EMBEDDING"].shape[0] == case.doc.size

    fuzz("Triton requests (model, in-process)", request_case(), check, tier, names=names)


@pytest.mark.e2e
@pytest.mark.parametrize("tier", TIERS)
def test_triton_requests_server(fuzz, server, tier):
    """Fewer cases, each a network round trip through a real tritonserver: 40 by default, 400 slow."""
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException

    client = http.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=120)

    def check(case):
        array, adapter = case.doc, case.extra["adapter"]
        if array.dtype == object and not all(isinstance(x, bytes) for x in array.reshape(-1)):
            array = array.astype(str).astype(object)  # the wire carries bytes: send the values' text
        inp = http.InferInput("TEXT", list(array.shape), "BYTES")
        inp.set_data_from_numpy(array)
        params = {"adapter": adapter} if adapter is not None else None
        try:
            res = client.infer("taskloom", [inp], parameters=params)
        except InferenceServerException as e:
            raise Refused(" ".join(str(e.message() or e).split())) from None
        finally:
            assert client.is_server_live() and client.is_model_ready("taskloom")  # still up
        assert res.as_numpy("EMBEDDING").shape[0] == array.shape[0]

    def sendable(case) -> bool:  # the HTTP client sends parameters as JSON: strings, numbers, booleans
        return isinstance(case.extra["adapter"], (str, int, float, bool, type(None))) and case.kind != "not bytes"

    def as_triton_sees_it(case: Case) -> Case:
        # tritonserver ends a JSON string parameter at a NUL byte before the model sees it: "senti\x00" arrives
        # as "senti" (served), "a\x00b" as "a" (refused). Whether it is refused depends on the prefix.
        if isinstance(case.extra["adapter"], str) and "\x00" in case.extra["adapter"]:
            case.valid = None
        return case

    fuzz(
        "Triton requests (real server)",
        request_case().filter(sendable).map(as_triton_sees_it),
        check,
        tier,
        names=names,
        cases=40 if tier == "default" else 400,
        note="real tritonserver over HTTP; liveness checked after every case; tritonserver cuts a string "
        "parameter at a NUL byte, so adapter 'senti\\x00' is served as 'senti'",
    )
    good = http.InferInput("TEXT", [1, 1], "BYTES")
    good.set_data_from_numpy(np.array([[b"still serving"]], dtype=object))
    assert client.infer("taskloom", [good], parameters={"adapter": "qa"}).as_numpy("EMBEDDING").shape == (1, 384)
    client.close()
