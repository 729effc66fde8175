"""Merging real PEFT adapters saved by peft on MiniLM: exact against an independent float64 formula,
identical to PEFT's own merge_and_unload for one adapter, loadable by transformers and peft."""

from __future__ import annotations

import json

import numpy as np
import pytest
from merge_helpers import base_state, dense_merge, lora_deltas, make_adapter, write_merge_yaml
from safetensors.numpy import load_file

from taskloom.artifacts import sha256_file, verify_digest
from taskloom.merge import merge_adapters, merge_from_config
from taskloom.models.registry import resolve_base
from taskloom.specs import MergeSpec

TEXTS = ["a gripping, beautifully shot film", "the plot never comes together", "what time is it?"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(root / "a", 0, r=4, alpha=8, targets=("query", "value"), task="sent", head_labels=["neg", "pos"]),
        "b": make_adapter(root / "b", 1, r=8, alpha=16, targets=("query", "dense"), task="topic", head_labels=["x", "y", "z"]),
    }


@pytest.fixture(scope="module")
def base():
    return base_state()


def _out_state(out):
    return load_file(str(out / "model.safetensors"))


def _max_err(got: dict, want: dict) -> float:
    assert got.keys() == want.keys()
    return max(float(np.abs(got[k].astype(np.float64) - want[k]).max()) for k in want if want[k].dtype != np.int64)


@pytest.mark.parametrize(
    "method,weights,lam",
    [("task_arithmetic", [0.7, 0.3], 1.5), ("task_arithmetic", [1.0, -0.4], 1.0), ("linear", [2.0, 1.0], 1.0),
     ("linear", [3.0, -1.0], 1.0)],
)
def test_linear_methods_match_the_dense_formula(tmp_path, adapters, base, method, weights, lam):
    cfg = write_merge_yaml(tmp_path / "merge.yaml", method, list(zip([adapters["a"], adapters["b"]], weights)),
                           parameters={"lambda": lam} if method == "task_arithmetic" else {})
    report = merge_from_config(cfg, tmp_path / "out")
    got = _out_state(tmp_path / "out")
    want = dense_merge(base, [adapters["a"], adapters["b"]], weights, method=method, lam=lam)
    assert _max_err(got, want) < 1e-5
    # tensors no adapter targets are the base's, bit for bit
    untouched = [k for k in base if k not in report["layers"]]
    assert len(untouched) == len(base) - report["layers_merged"] and "embeddings.word_embeddings.weight" in untouched
    assert all(np.array_equal(got[k], base[k]) for k in untouched)
    # 6 query + 6 value (a) ∪ 6 query + 18 dense + pooler (b)
    assert report["layers_merged"] == 31


def test_one_adapter_reproduces_peft_merge_and_unload(tmp_path, adapters):
    import torch
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    from taskloom.models.encoder import embed_texts

    spec = MergeSpec(method="linear", adapters=[{"path": adapters["a"], "weight": 1.0}])
    merge_adapters(spec, tmp_path / "out")
    base_path = resolve_base("minilm")
    peft_merged = PeftModel.from_pretrained(AutoModel.from_pretrained(base_path), adapters["a"]).merge_and_unload()
    ours = AutoModel.from_pretrained(tmp_path / "out").eval()
    theirs = peft_merged.eval()
    ref = theirs.state_dict()
    worst = max(float((v - ref[k]).abs().max()) for k, v in ours.state_dict().items() if v.is_floating_point())
    assert worst < 1e-6
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    e_ours = embed_texts(TEXTS, model=ours, tok=tok)
    e_theirs = embed_texts(TEXTS, model=theirs, tok=tok)
    assert float(np.abs(e_ours - e_theirs).max()) < 1e-5
    base_emb = embed_texts(TEXTS, model=AutoModel.from_pretrained(base_path).eval(), tok=tok)
    assert float(np.abs(e_ours - base_emb).max()) > 1e-3  # the adapter really changed the encoder
    with torch.no_grad():
        assert torch.equal(ours.embeddings.word_embeddings.weight, theirs.embeddings.word_embeddings.weight)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(r=4, alpha=8, use_rslora=True),
        dict(r=4, alpha=8, rank_pattern={"layer.1.attention.self.query": 2}, alpha_pattern={"value": 3}),
        dict(r=4, alpha=8, targets=("query", "word_embeddings"), modules_to_save=["pooler"]),
        dict(r=4, alpha=8, targets=("query", "key"), lora_bias=True),
    ],
    ids=["rslora", "rank_alpha_patterns", "embedding_and_modules_to_save", "lora_bias"],
)
def test_peft_variants_match_merge_and_unload(tmp_path, kwargs):
    from peft import PeftModel
    from transformers import AutoModel

    adapter = make_adapter(tmp_path / "ad", 7, **kwargs)
    merge_adapters(MergeSpec(method="task_arithmetic", adapters=[adapter]), tmp_path / "out")
    ref = PeftModel.from_pretrained(AutoModel.from_pretrained(resolve_base("minilm")), adapter).merge_and_unload().state_dict()
    got = _out_state(tmp_path / "out")
    assert set(ref) <= set(got)  # (+ the position_ids buffer the base file carries)
    worst = max(float(np.abs(got[k] - ref[k].numpy()).max()) for k in ref)
    changed = sum(not np.array_equal(got[k], v) for k, v in base_state().items())
    assert worst < 1e-6 and changed > 0


def test_output_layout_heads_and_report(tmp_path, adapters, base):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "out"
    cfg = write_merge_yaml(tmp_path / "merge.yaml", "task_arithmetic", [(adapters["a"], 0.5), (adapters["b"], 0.5)])
    report = merge_from_config(cfg, out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "merge_report.json"):
        assert (out / name).is_file(), name
    assert verify_digest(out / "model.safetensors") and verify_digest(out / "merge_report.json")
    assert not list(out.glob("*.bin")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    AutoModel.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    for task, n in (("sent", 2), ("topic", 3)):
        head = out / "heads" / task
        assert json.loads((head / "head.json").read_text())["labels"].__len__() == n
        assert verify_digest(head / "head.safetensors") and (head / "task.json").exists()
    on_disk = json.loads((out / "merge_report.json").read_text())
    assert on_disk["method"] == report["method"] == "task_arithmetic" and on_disk["tasks"] == ["sent", "topic"]
    assert on_disk["parameters"] == {"lambda": 1.0}
    a = on_disk["adapters"][0]
    assert a["sha256"]["adapter_model.safetensors"] == sha256_file(adapters["a"] / "adapter_model.safetensors")
    assert a["base_check"] == "recorded base matches" and a["r"] == 4
    assert on_disk["files"]["model.safetensors"] == sha256_file(out / "model.safetensors")
    # per-layer norms are the norms of the merged Δ and of each input's Δ
    key = "encoder.layer.0.attention.self.query.weight"
    da, db = lora_deltas(adapters["a"])[key], lora_deltas(adapters["b"])[key]
    entry = on_disk["layers"][key]
    assert entry["delta_norm"] == pytest.approx(np.linalg.norm(0.5 * da + 0.5 * db), rel=1e-5)
    assert entry["input_norms"] == pytest.approx([np.linalg.norm(da), np.linalg.norm(db)], rel=1e-5)
    assert on_disk["layers"]["encoder.layer.0.attention.self.value.weight"]["input_norms"][1] == 0.0
    # merging again into the same folder replaces it whole
    merge_from_config(cfg, out)
    assert json.loads((out / "merge_report.json").read_text())["layers_merged"] == 31


def test_sharded_output_loads_the_same(tmp_path, adapters):
    from transformers import AutoModel

    spec = MergeSpec(method="task_arithmetic", adapters=[adapters["a"], adapters["b"]])
    merge_adapters(spec, tmp_path / "one")
    report = merge_adapters(spec, tmp_path / "many", max_shard_bytes=20 << 20)
    shards = sorted(p.name for p in (tmp_path / "many").glob("model-*.safetensors"))
    assert len(shards) >= 4 and (tmp_path / "many" / "model.safetensors.index.json").exists()
    assert set(report["files"]) == {*shards, "model.safetensors.index.json"}
    one, many = AutoModel.from_pretrained(tmp_path / "one").state_dict(), AutoModel.from_pretrained(tmp_path / "many").state_dict()
    assert all(np.array_equal(one[k].numpy(), many[k].numpy()) for k in one)


def test_output_adapter_is_exact_at_the_summed_rank_and_reports_truncation(tmp_path, adapters):
    from peft import PeftModel
    from transformers import AutoModel

    ins = [(adapters["a"], 0.6), (adapters["b"], 0.4)]
    full = merge_adapters(MergeSpec(method="task_arithmetic", adapters=[{"path": p, "weight": w} for p, w in ins]),
                          tmp_path / "full")
    spec = MergeSpec(method="task_arithmetic", adapters=[{"path": p, "weight": w} for p, w in ins], output="adapter")
    rep = merge_adapters(spec, tmp_path / "ad")
    assert rep["refactor"]["rank"] == 12 and rep["refactor"]["relative_error"] < 1e-6
    assert (tmp_path / "ad" / "heads" / "sent" / "head.safetensors").exists()
    loaded = PeftModel.from_pretrained(AutoModel.from_pretrained(resolve_base("minilm")), tmp_path / "ad").merge_and_unload()
    want = _out_state(tmp_path / "full")
    worst = max(float(np.abs(v.numpy() - want[k]).max()) for k, v in loaded.state_dict().items())
    assert worst < 1e-5 and full["layers_merged"] == rep["layers_merged"]

    low = merge_adapters(spec.model_copy(update={"rank": 2}), tmp_path / "low")
    key = "encoder.layer.0.attention.self.query.weight"  # rank 4 + 8: truncation at 2 must lose something
    t = load_file(str(tmp_path / "low" / "adapter_model.safetensors"))
    mod = "base_model.model.encoder.layer.0.attention.self.query"
    delta = 0.6 * lora_deltas(adapters["a"])[key] + 0.4 * lora_deltas(adapters["b"])[key]
    approx = t[f"{mod}.lora_B.weight"].astype(np.float64) @ t[f"{mod}.lora_A.weight"].astype(np.float64)
    err = np.linalg.norm(delta - approx) / np.linalg.norm(delta)
    assert low["layers"][key]["relative_error"] == pytest.approx(err, rel=1e-3) and err > 0.05
    s = np.linalg.svd(delta, compute_uv=False)
    assert err == pytest.approx(np.sqrt((s[2:] ** 2).sum() / (s**2).sum()), rel=1e-3)  # Eckart–Young optimum
    assert 0 < low["refactor"]["relative_error"] <= low["refactor"]["max_layer_relative_error"]


def test_full_fine_tuned_models_merge_as_task_vectors(tmp_path, adapters, base):
    from peft import PeftModel
    from transformers import AutoModel

    full = tmp_path / "finetuned"
    PeftModel.from_pretrained(AutoModel.from_pretrained(resolve_base("minilm")), adapters["a"]).merge_and_unload().save_pretrained(full)
    cfg = write_merge_yaml(tmp_path / "m.yaml", "task_arithmetic", [(full, 0.5), (adapters["b"], 0.5)])
    report = merge_from_config(cfg, tmp_path / "out")
    want = dense_merge(base, [adapters["a"], adapters["b"]], [0.5, 0.5], method="task_arithmetic")
    assert _max_err(_out_state(tmp_path / "out"), want) < 1e-5
    assert report["adapters"][0]["kind"] == "full" and report["adapters"][1]["kind"] == "lora"


def test_ties_and_dare_on_real_adapters_are_seeded_and_sparse(tmp_path, adapters, base):
    ins = [adapters["a"], adapters["b"]]
    runs = {}
    for name, params in [("ties", {"density": 0.3}), ("dare_ties", {"density": 0.5, "seed": 1}),
                         ("dare_ties_again", {"density": 0.5, "seed": 1}), ("dare_other_seed", {"density": 0.5, "seed": 2})]:
        method = "ties" if name == "ties" else "dare_ties"
        merge_adapters(MergeSpec(method=method, adapters=ins, parameters=params), tmp_path / name)
        runs[name] = _out_state(tmp_path / name)
    key = "encoder.layer.0.attention.self.value.weight"  # only adapter a touches it
    changed = np.count_nonzero(runs["ties"][key] != base[key])
    assert abs(changed / base[key].size - 0.3) < 0.01  # TIES kept 30 % of a's Δ (normalize: Δ itself)
    kept = runs["ties"][key] != base[key]
    da = lora_deltas(adapters["a"])[key]
    assert np.allclose(runs["ties"][key][kept], (base[key] + da)[kept], atol=1e-6)
    assert np.abs(da[kept]).min() >= np.abs(da[~kept]).max()  # the largest magnitudes survived
    assert all(np.array_equal(runs["dare_ties"][k], runs["dare_ties_again"][k]) for k in base)
    assert not np.array_equal(runs["dare_ties"][key], runs["dare_other_seed"][key])


def test_adapter_of_a_task_wrapper_merges_into_the_encoder(tmp_path):
    """PEFT on BertForSequenceClassification names `bert.encoder...` and saves the classifier whole:
    the LoRA layers land on the encoder's tensors, the classifier (not in the base) is listed as ignored."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_base("minilm"), num_labels=2)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["query"], task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "seqcls")
    rep = merge_adapters(MergeSpec(method="linear", adapters=[tmp_path / "seqcls"]), tmp_path / "out")
    assert rep["layers_merged"] == 6
    assert rep["adapters"][0]["ignored_tensors"] == ["base_model.model.classifier.bias", "base_model.model.classifier.weight"]
    ref = peft_model.merge_and_unload().bert.state_dict()
    got = _out_state(tmp_path / "out")
    assert max(float(np.abs(got[k] - ref[k].numpy()).max()) for k in ref) < 1e-6


def test_a_merged_model_merges_again_with_its_heads(tmp_path, adapters):
    first = merge_adapters(MergeSpec(method="task_arithmetic", adapters=[adapters["a"], adapters["b"]]), tmp_path / "m1")
    again = merge_adapters(MergeSpec(method="linear", adapters=[tmp_path / "m1"]), tmp_path / "m2")
    assert again["adapters"][0]["kind"] == "full" and sorted(again["heads"]) == ["sent", "topic"] == sorted(first["heads"])
    one, two = _out_state(tmp_path / "m1"), _out_state(tmp_path / "m2")
    assert all(np.allclose(one[k], two[k], rtol=0, atol=1e-6) for k in one)
