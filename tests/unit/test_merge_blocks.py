"""Large tensors merged in blocks of rows give the same model as merging them whole: the TIES trim
threshold found block by block (radix selection on the float bits) against `trim_by_magnitude`, and
whole merges with a tiny block size against the same merges done in one piece."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from merge_helpers import make_adapter
from safetensors.torch import load_file, save_file

from taskloom.merge import merge_adapters, merger, sparsify
from taskloom.specs import MergeSpec

# magnitudes from a handful of values, so ties at the threshold are common
tied = st.sampled_from([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, 1e-40, -3.0])
matrices = arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 5)),
                  elements=st.one_of(tied, st.floats(-4, 4, width=32)))


@settings(max_examples=80, deadline=None)
@given(x=matrices, density=st.floats(0.01, 1.0), rows=st.integers(1, 5), rescale=st.booleans())
def test_blockwise_trim_is_the_whole_trim(x, density, rows, rescale):
    x = torch.from_numpy(x)

    def blocks():
        return (x[i : i + rows] for i in range(0, x.shape[0], rows))

    cut = sparsify.magnitude_cut(blocks, x.numel(), density)
    got = torch.cat([sparsify.trim_block(b, cut, i, density, rescale) for i, b in enumerate(blocks())])
    want = sparsify.trim_by_magnitude(x, density, rescale=rescale)
    assert torch.equal(got, want)
    assert int((got != 0).sum()) <= sparsify.kept_count(x.numel(), density)


def test_cut_breaks_ties_in_index_order_across_blocks():
    x = torch.tensor([[1.0, 3.0], [1.0, 1.0], [-1.0, 0.0]])  # keep 3 of 6: the 3, then the first two 1s
    cut = sparsify.magnitude_cut(lambda: (x[i : i + 1] for i in range(3)), 6, 0.5)
    assert cut.value == 1.0 and cut.equal_kept == 2 and cut.equal_before == [0, 1, 3]
    got = torch.cat([sparsify.trim_block(x[i : i + 1], cut, i, 0.5) for i in range(3)])
    assert torch.equal(got, torch.tensor([[1.0, 3.0], [1.0, 0.0], [0.0, 0.0]]))


def _tiny_models(root):
    """A tiny BERT base and two 'fine-tunes' whose deltas are multiples of 0.01 (many magnitude ties)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=600, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    model = BertModel(cfg)
    model.save_pretrained(root / "base")
    base = load_file(str(root / "base" / "model.safetensors"))
    for name, seed in (("ft-a", 1), ("ft-b", 2)):
        g = torch.Generator().manual_seed(seed)
        state = {k: (v + torch.randint(-3, 4, v.shape, generator=g) * 0.01) if v.is_floating_point() else v
                 for k, v in base.items()}
        (root / name).mkdir()
        save_file(state, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        (root / name / "config.json").write_text((root / "base" / "config.json").read_text())
    return root / "base", [root / "ft-a", root / "ft-b"]


METHODS = [("ties", {"density": 0.3}), ("magnitude_prune", {"density": 0.5}), ("task_arithmetic", {"lambda": 0.7}),
           ("linear", {}), ("delta_guided", {"gamma": 2.0}), ("dare_ties", {"density": 0.5})]


@pytest.mark.parametrize("method,params", METHODS, ids=[m for m, _ in METHODS])
def test_full_models_merge_the_same_in_blocks(tmp_path, monkeypatch, method, params):
    base, fts = _tiny_models(tmp_path)
    spec = MergeSpec(method=method, base_model=str(base), parameters=params,
                     adapters=[{"path": str(fts[0]), "weight": 0.6}, {"path": str(fts[1]), "weight": 0.4}])
    whole = merge_adapters(spec, tmp_path / "whole")
    monkeypatch.setattr(merger, "BLOCK_BYTES", 1000)  # the 600×32 embedding (77 KB): 86 blocks of 7 rows
    blocked = merge_adapters(spec, tmp_path / "blocked")
    key = "embeddings.word_embeddings.weight"
    blocks = blocked["layers"][key].get("blocks")
    assert blocks == (86 if method != "dare_ties" else None)  # DARE's mask needs the whole tensor
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "blocked" / "model.safetensors"))
    assert a.keys() == b.keys()
    if method == "delta_guided":  # the RMS is summed in another order: float64 rounding at most
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)
    else:
        assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    changed = a[key] - load_file(str(base / "model.safetensors"))[key]
    assert float(changed.abs().max()) > 0
    for field in ("delta_norm", "base_norm"):
        assert blocked["layers"][key][field] == pytest.approx(whole["layers"][key][field], rel=1e-5)
    assert blocked["layers"][key]["input_norms"] == pytest.approx(whole["layers"][key]["input_norms"], rel=1e-5)


def test_lora_embedding_and_linear_deltas_merge_the_same_in_blocks(tmp_path, monkeypatch):
    a = make_adapter(tmp_path / "a", 1, targets=("word_embeddings", "query"))
    b = make_adapter(tmp_path / "b", 2, targets=("word_embeddings", "value"))
    spec = MergeSpec(method="ties", parameters={"density": 0.4}, adapters=[{"path": str(a), "weight": 1.0},
                                                                          {"path": str(b), "weight": 0.5}])
    merge_adapters(spec, tmp_path / "whole")
    monkeypatch.setattr(merger, "BLOCK_BYTES", 200_000)  # embeddings (47 MB) and the 384×384 layers in blocks
    blocked = merge_adapters(spec, tmp_path / "blocked")
    assert blocked["layers"]["embeddings.word_embeddings.weight"]["blocks"] > 200
    assert blocked["layers"]["encoder.layer.0.attention.self.query.weight"]["blocks"] == 3
    x, y = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "blocked" / "model.safetensors"))
    worst = max(float((x[k] - y[k]).abs().max()) for k in x)
    assert worst < 1e-6
    assert json.loads((tmp_path / "blocked" / "merge_report.json").read_text())["method"] == "ties"


def test_nan_in_a_block_removes_the_partial_output(tmp_path, monkeypatch):
    from taskloom.errors import UserError

    base, fts = _tiny_models(tmp_path)
    state = load_file(str(fts[1] / "model.safetensors"))
    state["embeddings.word_embeddings.weight"][590, 3] = float("nan")  # in the last block
    save_file(state, str(fts[1] / "model.safetensors"), metadata={"format": "pt"})
    monkeypatch.setattr(merger, "BLOCK_BYTES", 1000)
    spec = MergeSpec(method="task_arithmetic", base_model=str(base),
                     adapters=[{"path": str(fts[0]), "weight": 1.0}, {"path": str(fts[1]), "weight": 1.0}])
    with pytest.raises(UserError, match="embeddings.word_embeddings.weight has NaN"):
        merge_adapters(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out*"))
