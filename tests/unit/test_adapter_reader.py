"""The one PEFT adapter reader: merging and serving read a folder by the same rules."""

import json
import re
import shutil

import pytest

from taskloom.errors import UserError
from taskloom.models.adapter import read_config
from taskloom.serve.lora import read_lora


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny base model folder, a PEFT LoRA adapter on it with non-zero factors)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(root / "base")
    lora = LoraConfig(r=2, lora_alpha=8, target_modules=["query"], rank_pattern={"layer.1.attention.self.query": 4},
                      init_lora_weights=False)
    get_peft_model(BertModel.from_pretrained(root / "base"), lora).save_pretrained(root / "adapter")
    return root / "base", root / "adapter"


def _edited(adapter, dst, **changes):
    shutil.copytree(adapter, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    return dst


def test_serving_computes_what_peft_computes(tiny):
    import torch
    from peft import PeftModel
    from transformers import BertModel

    from taskloom.serve.lora import attach

    base, adapter = tiny
    factors = read_lora(adapter)
    assert {m: (a.shape[0], s) for m, (a, _b, s) in factors.items()} == {
        "encoder.layer.0.attention.self.query": (2, 4.0), "encoder.layer.1.attention.self.query": (4, 2.0)}
    x = torch.randint(0, 100, (3, 7))
    ref = PeftModel.from_pretrained(BertModel.from_pretrained(base), adapter).eval()(input_ids=x).last_hidden_state
    model = BertModel.from_pretrained(base).eval()
    attach(model, {"a": adapter}).groups = [("a", None)]
    assert torch.allclose(model(input_ids=x).last_hidden_state, ref, atol=1e-5)


@pytest.mark.parametrize("changes, needle", [
    ({"use_dora": True}, "use_dora: DoRA (weight-decomposed LoRA) adapters are not additive"),
    ({"peft_type": "IA3"}, "peft_type 'IA3' is not LORA"),
    ({"lora_alpha": "lots"}, "r and lora_alpha must be numbers"),
])
def test_merge_and_serving_refuse_the_same_configs(tiny, tmp_path, changes, needle):
    from contextlib import ExitStack

    from taskloom.merge.lora import LoraAdapter
    from taskloom.merge.weights import KeyMatcher, ModelWeights, weight_files

    base, adapter = tiny
    bad = _edited(adapter, tmp_path / "bad", **changes)
    with pytest.raises(UserError, match=re.escape(needle)):
        read_lora(bad)
    with ExitStack() as stack:
        weights = ModelWeights(weight_files(base), stack, "base")
        with pytest.raises(UserError, match=re.escape(needle)):
            LoraAdapter(bad, weights, KeyMatcher(weights.keys()), stack, "input 1")


def test_rank_must_be_what_the_config_says(tiny, tmp_path):
    bad = _edited(tiny[1], tmp_path / "bad", rank_pattern={})
    with pytest.raises(UserError, match=r"layer\.1\.attention\.self\.query: factors have rank 4, adapter_config\.json says r=2"):
        read_lora(bad)


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_missing_file_is_named(tiny, tmp_path, missing):
    shutil.copytree(tiny[1], tmp_path / "ad")
    (tmp_path / "ad" / missing).unlink()
    with pytest.raises(UserError, match=f"^{tmp_path / 'ad'}: not a LoRA adapter folder: missing {missing}$"):
        read_config(tmp_path / "ad")


def test_serving_refuses_what_it_cannot_compute(tiny, tmp_path):
    bad = _edited(tiny[1], tmp_path / "bad", fan_in_fan_out=True)
    with pytest.raises(UserError, match="fan_in_fan_out=True is not supported for serving"):
        read_lora(bad)
