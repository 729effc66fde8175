"""Triton repository export and the backend's inference logic, in-process (no server needed)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_helpers import TEXTS, make_head_model, reference_head

from taskloom.artifacts import verify_digest
from taskloom.errors import UserError
from taskloom.models.chunks import plan_chunks
from taskloom.models.encoder import embed_texts
from taskloom.serve.backend import EncoderBackend, decode_texts
from taskloom.serve.repository import build_repository

pytestmark = pytest.mark.e2e  # tier: builds and loads model repositories (ONNX export)


@pytest.fixture(scope="module")
def head_model(tmp_path_factory):
    return make_head_model(tmp_path_factory.mktemp("headmodel"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory, head_model):
    repo = tmp_path_factory.mktemp("repo")
    assert build_repository("minilm", repo, name="minilm") == repo
    build_repository(head_model, repo, name="toy", head_task="toy", max_batch_size=8)
    return repo


def test_config_declares_inputs_outputs_and_batching(repo):
    cfg = (repo / "minilm" / "config.pbtxt").read_text()
    assert 'backend: "python"' in cfg and "max_batch_size: 64" in cfg and "dynamic_batching" in cfg
    assert re.search(r'name: "TEXT" data_type: TYPE_STRING dims: \[ 1 \]', cfg)
    assert re.search(r'name: "EMBEDDING" data_type: TYPE_FP32 dims: \[ 384 \]', cfg)
    assert "LABEL" not in cfg and "PROBS" not in cfg
    assert "kind: KIND_CPU count: 1" in cfg
    toy = (repo / "toy" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in toy
    assert re.search(r'name: "LABEL" data_type: TYPE_STRING dims: \[ 1 \]', toy)
    assert re.search(r'name: "PROBS" data_type: TYPE_FP32 dims: \[ 2 \]', toy)
    assert 'key: "head" value: { string_value: "head" }' in toy


def test_version_folder_holds_model_py_weights_head_and_digests(repo):
    v = repo / "toy" / "1"
    assert "TritonPythonModel" in (v / "model.py").read_text()
    assert verify_digest(v / "weights" / "model.safetensors")
    assert verify_digest(v / "head" / "head.safetensors")
    assert verify_digest(v / "manifest.json")
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["labels"] == ["fresh", "rotten"] and manifest["dim"] == 384
    assert set(manifest["files"]) >= {"model.py", "weights/model.safetensors", "weights/tokenizer.json", "head/head.json"}
    assert not (v / "weights" / "heads").exists()
    # nothing half-written is left beside the published models
    assert sorted(p.name for p in repo.iterdir()) == ["minilm", "toy"]


def test_rebuild_replaces_the_model_whole(tmp_path):
    build_repository("minilm", tmp_path, max_batch_size=4)
    (tmp_path / "taskloom" / "1" / "stale.txt").write_text("old")
    build_repository("minilm", tmp_path, max_batch_size=16)
    assert "max_batch_size: 16" in (tmp_path / "taskloom" / "config.pbtxt").read_text()
    assert not (tmp_path / "taskloom" / "1" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taskloom"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model_dir": "no/such/folder"}, "no such model folder"),
        ({"model_dir": "minilm", "head_task": "toy"}, "no classification head"),
        ({"model_dir": "minilm", "name": "bad name"}, "model name"),
        ({"model_dir": "minilm", "max_batch_size": 0}, "max_batch_size"),
    ],
)
def test_bad_input_is_one_clear_line_and_nothing_written(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message) as e:
        build_repository(repo_dir=tmp_path / "repo", **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_head_of_wrong_width_or_label_count_is_refused(tmp_path):
    model = make_head_model(tmp_path / "a", dim=128)
    with pytest.raises(UserError, match="head expects 128 inputs, model gives 384"):
        build_repository(model, tmp_path / "repo", head_task="toy")
    bad = make_head_model(tmp_path / "b")
    (bad / "heads" / "toy" / "head.json").write_text(json.dumps({"labels": ["a", "b", "c"]}))
    with pytest.raises(UserError, match="3 labels"):
        build_repository(bad, tmp_path / "repo", head_task="toy")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_model_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no safetensors weights"):
        build_repository(tmp_path / "m", tmp_path / "repo")


@pytest.fixture(scope="module")
def backend(repo):
    cfg = {"parameters": {"weights": {"string_value": "weights"}, "head": {"string_value": "head"}}}
    return EncoderBackend.from_triton(repo / "toy" / "1", cfg)


def test_backend_embeddings_equal_in_process_encoder(backend):
    emb = backend.embed(TEXTS)
    ref = embed_texts(TEXTS)
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert (emb * ref).sum(1).min() >= 0.9999


def test_backend_head_outputs_equal_in_process_head(backend, head_model):
    out = backend.infer(TEXTS)
    labels, probs = reference_head(head_model, TEXTS)
    np.testing.assert_allclose(out["PROBS"], probs, atol=1e-4)
    assert [b[0].decode() for b in out["LABEL"]] == labels
    assert out["LABEL"].shape == (5, 1) and out["PROBS"].shape == (5, 2)


def test_one_bad_request_fails_alone_in_a_batch(backend):
    good = np.array([[t.encode()] for t in TEXTS[:2]], dtype=object)
    results = backend.execute([good, np.array([[b""]], dtype=object), np.array([[b"\xff\xfe"]], dtype=object), good[:1]])
    assert results[1] == "TEXT row 0: empty text"
    assert results[2] == "TEXT row 0: not valid UTF-8"
    assert results[0]["EMBEDDING"].shape == (2, 384) and results[3]["EMBEDDING"].shape == (1, 384)
    np.testing.assert_allclose(results[0]["EMBEDDING"][0], results[3]["EMBEDDING"][0], atol=1e-5)


def test_decode_texts_names_the_row():
    assert decode_texts(np.array([[b"a"], ["b"]], dtype=object)) == ["a", "b"]
    with pytest.raises(ValueError, match="TEXT row 1: empty text"):
        decode_texts(np.array([[b"a"], [b"   "]], dtype=object))
    with pytest.raises(ValueError, match="TEXT row 0: .* characters"):
        decode_texts(np.array([[b"x" * 100_001]], dtype=object))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 128), min_size=1, max_size=64), st.integers(0, 512))
def test_plan_chunks_covers_every_text_once_and_beats_one_padded_batch(lengths, overhead):
    lengths = sorted(lengths)
    chunks = plan_chunks(lengths, overhead)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a < b for a, b in chunks) and all(chunks[i][1] == chunks[i + 1][0] for i in range(len(chunks) - 1))
    cost = sum((b - a) * lengths[b - 1] + overhead for a, b in chunks)
    assert cost <= len(lengths) * lengths[-1] + overhead


def test_plan_chunks_splits_only_when_padding_costs_more_than_a_pass():
    assert plan_chunks([10] * 8 + [120] * 2, overhead=50) == [(0, 8), (8, 10)]
    assert plan_chunks([10] * 8 + [120] * 2, overhead=5000) == [(0, 10)]


# ---- the fp32 fast path: the body on ONNX Runtime ---------------------------------------------------
def test_fp32_model_without_adapters_is_built_for_onnx_runtime(repo):
    v = repo / "toy" / "1"
    manifest = json.loads((v / "manifest.json").read_text())
    assert manifest["engine"] == "onnxruntime" and manifest["serving"]["engine"] == "auto"
    assert "onnx/model.onnx" in manifest["files"] and (v / "onnx" / "model.onnx").stat().st_size > 1_000_000
    assert 'key: "engine" value: { string_value: "onnxruntime" }' in (repo / "toy" / "config.pbtxt").read_text()


def test_onnx_runtime_backend_gives_the_torch_numbers(repo, backend, head_model):
    cfg = {"parameters": {"weights": {"string_value": "weights"}, "head": {"string_value": "head"},
                          "engine": {"string_value": "onnxruntime"}}}
    fast = EncoderBackend.from_triton(repo / "toy" / "1", cfg)
    assert fast.session is not None and fast.model is None  # no torch copy of the body
    texts = TEXTS + ["a much longer review that rambles on about the plot, the cast and the score " * 4]
    emb, ref = fast.embed(texts), backend.embed(texts)
    assert emb.dtype == np.float32 and emb.shape == ref.shape
    assert (emb * ref).sum(1).min() >= 0.9999
    out = fast.infer(TEXTS)
    labels, probs = reference_head(head_model, TEXTS)
    np.testing.assert_allclose(out["PROBS"], probs, atol=1e-4)
    assert [b[0].decode() for b in out["LABEL"]] == labels


def test_engine_choice_follows_precision_and_adapters(tmp_path):
    from taskloom.serve.repository import resolve_engine

    assert resolve_engine("auto", "fp32", adapters=False) == "onnxruntime"
    assert resolve_engine("auto", "bf16", adapters=False) == "torch"
    assert resolve_engine("auto", "fp32", adapters=True) == "torch"
    assert resolve_engine("torch", "fp32", adapters=False) == "torch"
    with pytest.raises(UserError, match="engine onnxruntime: serves one fp32 model without adapters"):
        build_repository("minilm", tmp_path / "r", precision="bf16", engine="onnxruntime")
    with pytest.raises(UserError, match="engine 'tensorrt'"):
        build_repository("minilm", tmp_path / "r", engine="tensorrt")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    build_repository("minilm", tmp_path / "t", engine="torch")
    assert not (tmp_path / "t" / "taskloom" / "1" / "onnx").exists()


def test_onnx_cache_keeps_the_exports_used_last(tmp_path):
    import os

    from taskloom.serve.onnx_runtime import prune_cache

    now = 1_000_000.0
    for i in range(10):  # export i used at now - 100 + i: 0 and 1 are the oldest
        (tmp_path / f"{i}.onnx").write_bytes(b"x")
        os.utime(tmp_path / f"{i}.onnx", (now - 100 + i, now - 100 + i))
    killed, running = tmp_path / ".a.onnx.17.tmp", tmp_path / ".b.onnx.18.tmp"
    for p, age in ((killed, 7200), (running, 60)):
        p.write_bytes(b"partial")
        os.utime(p, (now - age, now - age))
    removed = prune_cache(tmp_path, keep=8, now=now)
    assert sorted(p.name for p in removed) == [".a.onnx.17.tmp", "0.onnx", "1.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".b.onnx.18.tmp"] + [f"{i}.onnx" for i in range(2, 10)])
    assert prune_cache(tmp_path, keep=8, now=now) == []


def test_a_replaced_onnx_file_fails_the_load(tmp_path):
    from taskloom.serve.backend import verify_manifest

    build_repository("minilm", tmp_path)
    v = tmp_path / "taskloom" / "1"
    (v / "onnx" / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(UserError, match="onnx/model.onnx"):
        verify_manifest(v)
