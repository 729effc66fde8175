"""One Triton model serving MiniLM and two LoRA adapters, picked per request by the `adapter` parameter.

Compared with in-process PEFT (`PeftModel` over MiniLM, one adapter at a time): the served
embeddings and head outputs must match whatever the mix of adapters in a batch. One server is shared
by the module; it also answers the metrics and `taskloom infer` tests.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
import urllib.request

import numpy as np
import pytest
from serve_helpers import TEXTS, make_adapter, reference_adapter

from taskloom.artifacts import sha256_file
from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.models.encoder import embed_texts
from taskloom.serve.backend import EncoderBackend
from taskloom.serve.client import TritonClient
from taskloom.serve.launcher import TritonServer
from taskloom.serve.repository import build_repository

pytestmark = pytest.mark.e2e  # tier: a real Triton server

ADAPTERS = {"senti": ["fresh", "rotten"], "qa": None}


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(root, name, seed, labels) for seed, (name, labels) in enumerate(ADAPTERS.items())}


@pytest.fixture(scope="module")
def refs(adapters):
    """{adapter or None: (embeddings, labels, probs)} computed in-process."""
    out = {name: reference_adapter(path, TEXTS) for name, path in adapters.items()}
    out[None] = (embed_texts(TEXTS), None, None)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, adapters):
    return build_repository("minilm", tmp_path_factory.mktemp("repo"), adapters=adapters, max_batch_size=8)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    with TritonServer(repo, model_control="explicit", models=["*"], log_dir=tmp_path_factory.mktemp("logs")) as s:
        yield s


def cos(a, b):
    return (np.asarray(a) * np.asarray(b)).sum(-1)


def test_repository_declares_adapters_heads_and_digests(repo):
    cfg = (repo / "taskloom" / "config.pbtxt").read_text()
    assert "version_policy: { specific: { versions: [ 1 ] } }" in cfg
    assert re.search(r'name: "LABEL" data_type: TYPE_STRING dims: \[ 1 \]', cfg)
    assert re.search(r'name: "PROBS" data_type: TYPE_FP32 dims: \[ -1 \]', cfg)
    assert 'key: "adapters" value: { string_value: "adapters" }' in cfg
    v = repo / "taskloom" / "1"
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["adapters"]["senti"]["labels"] == ["fresh", "rotten"] and manifest["adapters"]["qa"]["labels"] is None
    for f in ("adapters/senti/adapter_model.safetensors", "adapters/senti/head.safetensors", "adapters/qa/adapter_config.json"):
        assert manifest["files"][f] == sha256_file(v / f)
    assert json.loads((repo / "taskloom" / "versions.json").read_text())["serving"] == 1


def test_backend_mixed_batch_equals_peft_one_adapter_at_a_time(repo, refs):
    cfg = {"parameters": {"weights": {"string_value": "weights"}, "adapters": {"string_value": "adapters"}}}
    backend = EncoderBackend.from_triton(repo / "taskloom" / "1", cfg)
    names = ["senti", None, "qa", "senti", None]
    emb = backend.embed(TEXTS, names)
    got = [float(emb[i] @ refs[n][0][i]) for i, n in enumerate(names)]
    assert min(got) >= 0.999, got
    # the adapters really change the embedding, so matching the right reference means routing worked
    assert max(float(refs["senti"][0][i] @ refs[None][0][i]) for i in range(5)) < 0.99
    assert max(float(refs["qa"][0][i] @ refs["senti"][0][i]) for i in range(5)) < 0.99
    good = np.array([[t.encode()] for t in TEXTS], dtype=object)
    out = backend.execute([good, good, good[:1], good], ["senti", "qa", "nope", None])
    np.testing.assert_allclose(out[0]["PROBS"], refs["senti"][2], atol=1e-4)
    assert [b[0].decode() for b in out[0]["LABEL"]] == refs["senti"][1]
    assert out[1]["PROBS"].shape == (5, 0) and out[1]["LABEL"].shape == (5, 1)
    assert out[2].startswith("adapter 'nope': not served by this model (adapters: qa, senti")
    assert cos(out[3]["EMBEDDING"], refs[None][0]).min() >= 0.999


def _corrupt(folder):
    f = folder / "adapter_model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_corrupt, "sha256 does not match adapter_model.safetensors.sha256"),
        (lambda d: (d / "adapter_model.safetensors.sha256").unlink(), "no adapter_model.safetensors.sha256"),
        (lambda d: (d / "adapter_config.json").unlink(), "not a LoRA adapter folder"),
        (lambda d: (d / "head.json").write_text(json.dumps({"labels": ["a", "b", "c"]})), "3 labels"),
    ],
)
def test_bad_adapter_is_refused_and_nothing_written(tmp_path, adapters, damage, message):
    bad = tmp_path / "senti"
    shutil.copytree(adapters["senti"], bad)
    damage(bad)
    with pytest.raises(UserError, match=message) as e:
        build_repository("minilm", tmp_path / "repo", adapters={"senti": bad})
    assert "\n" not in str(e.value)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_bad_adapter_name_is_refused(tmp_path, adapters):
    for name in ("bad name", "__base__"):
        with pytest.raises(UserError, match="adapter name"):
            build_repository("minilm", tmp_path / "repo", adapters={name: adapters["qa"]})


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_server_routes_each_request_to_its_adapter(server, refs, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonClient(url, protocol=protocol) as c:
        for adapter in (None, "senti", "qa"):
            out = c.infer(TEXTS, adapter=adapter)
            emb, labels, probs = refs[adapter]
            assert cos(out["embedding"], emb).min() >= 0.999, adapter
            assert out["label"] == labels
            if probs is None:
                assert out["probs"] is None
            else:
                np.testing.assert_allclose(out["probs"], probs, atol=1e-4)


def test_concurrent_requests_mixing_adapters_are_each_answered_right(server, refs):
    errors, scores = [], []
    order = [None, "senti", "qa"]

    def worker(k):
        try:
            with TritonClient(server.grpc_url, protocol="grpc") as c:
                for i in range(6):
                    adapter, j = order[(i + k) % 3], (i + 2 * k) % len(TEXTS)
                    scores.append(float(c.infer([TEXTS[j]], adapter=adapter)["embedding"][0] @ refs[adapter][0][j]))
        except Exception as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(scores) == 24 and min(scores) >= 0.999


def metrics(server) -> dict[str, float]:
    """This model's request counters from Triton's Prometheus endpoint (failures summed over reasons)."""
    text = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(server.metrics_url, timeout=10).read().decode()
    out = {"success": 0.0, "failure": 0.0}
    for kind in out:
        for m in re.finditer(rf'^nv_inference_request_{kind}{{([^}}]*)}} (\S+)$', text, re.M):
            if 'model="taskloom"' in m.group(1):
                out[kind] += float(m.group(2))
    return out


def settled(server, timeout: float = 15.0) -> dict[str, float]:
    """The counters once they stop moving: Triton records a request's statistics after its response is
    sent, so under load the previous test's last requests can still land after a first read."""
    last, end = metrics(server), time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.5)
        now = metrics(server)
        if now == last:
            return now
        last = now
    return last


def test_bad_requests_fail_alone_with_clear_errors_and_metrics_count_requests(server):
    before = settled(server)
    with TritonClient(server.http_url) as c:
        for adapter in (None, "senti", "qa"):
            assert c.infer(["serving"], adapter=adapter)["embedding"].shape == (1, 384)
        good = settled(server)
        assert good["success"] - before["success"] == 3 and good["failure"] == before["failure"]
        with pytest.raises(UserError, match=r"adapter 'nope': not served by this model \(adapters: qa, senti"):
            c.infer(["x"], adapter="nope")
        with pytest.raises(UserError, match="TEXT row 0: empty text"):
            c.infer([" "], adapter="senti")
        with pytest.raises(UserError, match="TEXT row 0: 100001 characters, more than 100000"):
            c.infer(["x" * 100_001])
        with pytest.raises(UserError, match="batch-size must be <= 8"):
            c.infer(["x"] * 9, adapter="qa")
        for adapter in (None, "senti", "qa"):
            assert c.infer(["still serving"], adapter=adapter)["embedding"].shape == (1, 384)
    # the three bad requests reached the model (Triton counts a python-backend error response as an
    # executed request); the batch over the limit was rejected before it. Triton may answer a request
    # a moment before it counts it, so read the counters until they settle (at most 5 s).
    deadline = time.monotonic() + 5
    while sum((after := metrics(server)).values()) - sum(good.values()) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(after.values()) - sum(good.values()) == 3 + 3


def test_infer_cli_prints_labels_and_embeddings(server, refs, tmp_path, capsys):
    assert main(["infer", TEXTS[0], TEXTS[1], "--url", server.http_url, "--adapter", "senti"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 2 and out["adapter"] == "senti" and out["dim"] == 384
    assert [r["label"] for r in out["results"]] == refs["senti"][1][:2]
    assert float(np.asarray(out["results"][1]["embedding"]) @ refs["senti"][0][1]) >= 0.999
    rows = tmp_path / "texts.jsonl"
    rows.write_text("".join(json.dumps({"review": t}) + "\n" for t in TEXTS))
    assert main(["infer", "--file", str(rows), "--field", "review", "--url", server.grpc_url, "--protocol", "grpc",
                 "--no-embeddings", "--batch-size", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == 5 and "embedding" not in out["results"][0] and "label" not in out["results"][0]
    rows.write_text(json.dumps({"review": "fine"}) + "\n" + json.dumps({"review": ""}) + "\n")
    assert main(["infer", "--file", str(rows), "--field", "review", "--url", server.http_url]) == 2
    assert "texts.jsonl: row 2: field 'review': expected a non-empty string" in capsys.readouterr().err
    assert main(["infer", "x", "--url", server.http_url, "--adapter", "nope"]) == 2
    assert "adapter 'nope': not served" in capsys.readouterr().err
    assert rows.read_text().count("\n") == 2  # the input file is untouched
