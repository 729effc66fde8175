"""Tensor-at-a-time reading and streamed writing of safetensors, checked against the safetensors library."""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from taskloom.artifacts import verify_digest
from taskloom.errors import UserError
from taskloom.merge.weights import KeyMatcher, ModelWeights, StreamingWriter, weight_files

TENSORS = {
    "a.weight": torch.randn(5, 3),
    "b.half": torch.randn(4).half(),
    "c.bf16": torch.randn(2, 2, 2).bfloat16(),
    "d.ids": torch.arange(7),
    "e.mask": torch.tensor([True, False, True]),
    "f.scalar": torch.tensor(3.5),
    "g.empty": torch.zeros(0, 4),
    "h.big": torch.randn(64, 64),
}


def _dtype(t) -> str:
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.bool: "BOOL"}[t.dtype]


@pytest.mark.parametrize("max_shard_bytes", [1 << 30, 4096])
def test_streamed_files_read_back_identically_with_safetensors(tmp_path, max_shard_bytes):
    plan = [(k, _dtype(t), tuple(t.shape)) for k, t in TENSORS.items()]
    writer = StreamingWriter(tmp_path, plan, max_shard_bytes=max_shard_bytes)
    for k, t in TENSORS.items():
        writer.write(k, t)
    files = writer.close()
    if max_shard_bytes == 4096:
        # the 16 KiB tensor alone exceeds 4 KiB: everything before it in one shard, it in the next
        assert [f.name for f in files] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                           "model.safetensors.index.json"]
        index = json.loads(files[-1].read_text())
        assert index["weight_map"]["h.big"] == "model-00002-of-00002.safetensors"
        assert index["weight_map"]["g.empty"] == "model-00001-of-00002.safetensors"
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in TENSORS.values())
    else:
        assert [f.name for f in files] == ["model.safetensors"]
    seen = {}
    for f in weight_files(tmp_path):
        assert verify_digest(f)
        with safe_open(str(f), framework="pt") as h:
            assert h.metadata() == {"format": "pt"}
            seen.update({k: h.get_tensor(k) for k in h.keys()})
    assert seen.keys() == TENSORS.keys()
    assert all(torch.equal(seen[k], t) and seen[k].dtype == t.dtype for k, t in TENSORS.items())


def test_reader_matches_safetensors_files(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with ExitStack() as stack:
        w = ModelWeights([tmp_path / "model.safetensors"], stack, "test")
        assert set(w.keys()) == set(TENSORS)
        for k, t in TENSORS.items():
            got = w.get(k)
            assert torch.equal(got, t) and got.dtype == t.dtype and w.shape(k) == tuple(t.shape)
        assert w.dtype("c.bf16") == "BF16"


def test_writer_refuses_tensors_out_of_plan(tmp_path):
    writer = StreamingWriter(tmp_path, [("a", "F32", (2,)), ("b", "F32", (2,))])
    with pytest.raises(RuntimeError, match="expected a F32"):
        writer.write("a", torch.zeros(3))
    writer.write("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="closed after 1 of 2"):
        writer.close()
    writer.abort()


@pytest.mark.parametrize("content", [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}", b"\xff" * 8 + b"{}"])
def test_corrupt_files_are_user_errors(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with ExitStack() as stack, pytest.raises(UserError, match="not a readable safetensors file"):
        ModelWeights([tmp_path / "model.safetensors"], stack, "test")


def test_key_matcher_bridges_wrappers_but_never_guesses():
    m = KeyMatcher(["encoder.layer.0.query.weight", "encoder.layer.1.query.weight", "pooler.dense.weight"])
    assert m.find("encoder.layer.0.query.weight") == "encoder.layer.0.query.weight"
    assert m.find("bert.encoder.layer.1.query.weight") == "encoder.layer.1.query.weight"  # task-wrapper prefix
    assert KeyMatcher(["bert.pooler.dense.weight"]).find("pooler.dense.weight") == "bert.pooler.dense.weight"
    assert m.find("query.weight") is None  # two layers end like this: ambiguous, no match
    assert m.find("decoder.block.0.weight") is None
