"""Generation tasks on SmolLM2: the cached base, prompt masking, token weights, padding, the loss.

The real SmolLM2-135M-Instruct is loaded once per module (from the float32 cache the first load
writes); rows are short and max_length small so each forward pass is cheap.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from taskloom.data.rows import load_rows
from taskloom.errors import UserError
from taskloom.models.cache import MARKER, cached_gguf_folder
from taskloom.models.causal import CAUSAL_TARGET_MODULES, load_causal
from taskloom.models.registry import base_kind, resolve_base
from taskloom.train.generation import (
    IGNORE,
    answer_loss,
    collate,
    common_tokens,
    encode_rows,
    generate,
    generation_loss,
)

ROWS = [
    {"prompt": "What is the capital of Italy?", "response": "Rome"},
    {"prompt": "Who wrote Hamlet?", "response": "William Shakespeare wrote it."},
    {"prompt": "What colour is the sky?", "response": "The sky is blue on a clear day."},
    {"prompt": "Name a prime number.", "response": "Seven is a prime number."},
]


@pytest.fixture(scope="module")
def lm():
    return load_causal("smollm2")


def _prompt_text(tok, prompt: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)


def test_smollm2_is_a_cached_hf_folder(lm):
    tok, model = lm
    folder = resolve_base("smollm2")
    assert base_kind("smollm2") == "causal_lm"
    assert folder.name == "smollm2-135m-instruct" and folder.parent.name == "models"
    assert (folder / MARKER).is_file() and (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file()
    assert not list(folder.parent.glob(".smollm2-135m-instruct.staging.*"))
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in cfg
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    assert tok.pad_token is not None and tok.eos_token == "<|im_end|>"


def test_a_complete_cache_folder_is_trusted(tmp_path, monkeypatch):
    real = resolve_base("smollm2")
    monkeypatch.setenv("TASKLOOM_CACHE", str(tmp_path))
    final = tmp_path / "models" / "smollm2-135m-instruct"
    final.mkdir(parents=True)
    for f in real.iterdir():
        (final / f.name).symlink_to(f)
    assert resolve_base("smollm2") == final  # no rebuild: the marker says the folder is whole
    tok, model = load_causal(str(final))  # a local HF causal-LM folder loads the same way
    assert model.config.num_hidden_layers == 30 and tok.eos_token == "<|im_end|>"


def test_a_failed_first_load_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKLOOM_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(Exception):  # noqa: B017 (whatever gguf raises on a truncated file; the point is what is left)
        cached_gguf_folder(pkg, "broken.gguf", "broken")
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir()] == [".broken.lock"]  # no final folder, no staging left


@pytest.mark.slow
def test_a_half_written_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKLOOM_CACHE", str(tmp_path))
    models = tmp_path / "models"
    (models / "smollm2-135m-instruct").mkdir(parents=True)
    (models / "smollm2-135m-instruct" / "config.json").write_text("{}")  # a folder without the marker
    (models / ".smollm2-135m-instruct.staging.dead").mkdir()  # left by a killed first load
    folder = resolve_base("smollm2")
    assert (folder / MARKER).is_file() and json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 30
    assert sorted(p.name for p in models.iterdir()) == [".smollm2-135m-instruct.lock", "smollm2-135m-instruct"]


def test_load_causal_refuses_an_encoder():
    with pytest.raises(UserError, match="not a causal language model"):
        load_causal("minilm")


def test_prompt_and_template_are_masked(lm):
    tok, _model = lm
    for row, ex in zip(ROWS, encode_rows(tok, ROWS, max_length=96)):
        n_prompt = sum(1 for lab in ex["labels"] if lab == IGNORE)
        assert ex["labels"][:n_prompt] == [IGNORE] * n_prompt and IGNORE not in ex["labels"][n_prompt:]
        assert tok.decode(ex["input_ids"][:n_prompt]) == _prompt_text(tok, row["prompt"])
        assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
        assert tok.decode(ex["labels"][n_prompt:]) == row["response"] + "<|im_end|>"
        assert ex["weights"] == [0.0] * n_prompt + [1.0] * (len(ex["labels"]) - n_prompt)


def test_long_prompts_are_cut_before_the_response(lm):
    tok, _model = lm
    row = {"prompt": "Tell me more about this please. " * 20 + "What is the capital of Italy?", "response": "Rome"}
    (ex,) = encode_rows(tok, [row], max_length=40)
    assert len(ex["input_ids"]) == 40
    text = tok.decode(ex["input_ids"])
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\nRome<|im_end|>")
    assert tok.decode([t for t in ex["labels"] if t != IGNORE]) == "Rome<|im_end|>"
    (short,) = encode_rows(tok, [row], max_length=31)  # the template (30 tokens) leaves room for one
    assert len(short["input_ids"]) == 31 and tok.decode([t for t in short["labels"] if t != IGNORE]) == "Rome"
    with pytest.raises(UserError, match="max_length 30: too short for the chat template"):
        encode_rows(tok, [row], max_length=30)


def test_key_tokens_get_the_key_weight(lm):
    tok, _model = lm
    row = {"prompt": "Capital of France?", "response": "The capital of France is Paris.", "keys": ["Paris"]}
    (ex,) = encode_rows(tok, [row], max_length=96, key_weight=4.0)
    answer = [(tok.decode([t]), w) for t, lab, w in zip(ex["input_ids"], ex["labels"], ex["weights"]) if lab != IGNORE]
    assert [w for _t, w in answer] == [4.0 if t.strip() == "Paris" else 1.0 for t, _w in answer]
    assert answer[-1] == ("<|im_end|>", 1.0) and sum(w == 4.0 for _t, w in answer) == 1
    (off,) = encode_rows(tok, [row], max_length=96, key_weight=1.0)
    assert set(w for w, lab in zip(off["weights"], off["labels"]) if lab != IGNORE) == {1.0}


def test_heuristic_keys_are_rare_content_tokens(lm):
    tok, _model = lm
    common = common_tokens(tok, ROWS, top_k=3)
    assert len(common) == 3 and tok.encode(" is", add_special_tokens=False)[0] in common
    exs = encode_rows(tok, ROWS, max_length=96, key_weight=2.0, common=common)
    for ex in exs:
        for t, lab, w in zip(ex["input_ids"], ex["labels"], ex["weights"]):
            if lab == IGNORE:
                continue
            piece = tok.decode([t])
            rare_content = t not in common and any(c.isalnum() for c in piece) and piece != "<|im_end|>"
            assert w == (2.0 if rare_content else 1.0), piece
    flat = [w for ex in exs for w in ex["weights"] if w]
    assert 0 < flat.count(2.0) < len(flat)


def test_collate_pads_to_the_longest_row_only(lm):
    tok, _model = lm
    exs = encode_rows(tok, ROWS[:3], max_length=96)
    lengths = [len(e["input_ids"]) for e in exs]
    b = collate(exs, tok.pad_token_id)
    assert tuple(b["input_ids"].shape) == (3, max(lengths)) and max(lengths) < 96
    assert b["attention_mask"].sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert b["labels"][i, n:].eq(IGNORE).all() and b["weights"][i, n:].eq(0).all()
        assert b["input_ids"][i, n:].eq(tok.pad_token_id).all()
        assert b["labels"][i, :n].tolist() == exs[i]["labels"]


def test_losses_agree_with_the_full_logits(lm):
    import torch
    import torch.nn.functional as F

    tok, model = lm
    exs = encode_rows(tok, ROWS, max_length=64)
    b = collate(exs, tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
        full = F.cross_entropy(logits.reshape(-1, logits.size(-1)), b["labels"][:, 1:].reshape(-1), ignore_index=IGNORE)
        ours = generation_loss(model, b)
    al = answer_loss(tok, model, ROWS, max_length=64, batch_size=3)
    assert math.isfinite(al) and 0.5 < al < 8.0
    assert ours.item() == pytest.approx(full.item(), rel=1e-4)
    assert al == pytest.approx(full.item(), rel=1e-4)  # unweighted mean NLL per response token

    weighted = collate(encode_rows(tok, ROWS, max_length=64, key_weight=3.0, common=common_tokens(tok, ROWS, 3)), 2)
    with torch.no_grad():
        nll = F.cross_entropy(logits.transpose(1, 2), weighted["labels"][:, 1:], ignore_index=IGNORE, reduction="none")
        w = weighted["weights"][:, 1:]
        expected = (nll * w).sum() / w.sum()
        got = generation_loss(model, weighted)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4) and abs(got.item() - ours.item()) > 0.01


def test_a_few_lora_steps_lower_the_answer_loss_and_generate_follows(lm):
    import torch
    from peft import LoraConfig, get_peft_model

    tok, base = lm
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=CAUSAL_TARGET_MODULES, lora_dropout=0.0))
    try:
        before = answer_loss(tok, model, ROWS, max_length=48)
        batch = collate(encode_rows(tok, ROWS, max_length=48), tok.pad_token_id)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        model.train()
        for _ in range(10):
            loss = generation_loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
        after = answer_loss(tok, model, ROWS, max_length=48)
        assert math.isfinite(after) and after < 0.25 * before
        replies = generate(tok, model, [r["prompt"] for r in ROWS[:2]], max_tokens=12)
        assert replies == ["Rome", "William Shakespeare wrote it."]  # stops at the learned end-of-turn
        assert model.training  # generate restores the mode it found
    finally:
        model.unload()  # the module's base model stays as loaded


def test_generate_is_greedy_and_deterministic(lm):
    tok, model = lm
    first = generate(tok, model, ["What is the capital of Italy?", "Say hello."], max_tokens=6)
    assert first == generate(tok, model, ["What is the capital of Italy?", "Say hello."], max_tokens=6)
    assert all(isinstance(r, str) and r for r in first) and "<|im_end|>" not in " ".join(first)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "q", "response": "Rome", "keys": ["Paris"]}, "row 1: field 'keys': 'Paris' is not part of the response"),
        ({"prompt": "q", "response": "Rome", "keys": ["  "]}, "row 1: field 'keys': a key is blank"),
        ({"prompt": "q", "response": "Rome", "keys": "Rome"}, "row 1: field 'keys': expected a list of strings, got a string"),
        ({"prompt": "q", "response": "Rome", "keys": ["Rome", 3]}, "row 1: field 'keys': expected a list of strings, got a list"),
    ],
)
def test_bad_keys_name_file_and_row(tmp_path, row, message):
    path = tmp_path / "train.jsonl"
    body = json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps(row) + "\n"
    path.write_text(body)
    with pytest.raises(UserError) as err:
        load_rows(path, "generation")
    # one bad row of two is more than validation.bad_rows allows (1 %): the first bad row, then the share
    assert str(err.value) == f"{path}: {message.replace('row 1', 'row 2')} (1 of 2 rows bad, 50.0%; " \
        "validation.bad_rows allows 1.0%)"
    assert path.read_text() == body


def test_rows_with_keys_load(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": "Capital of Italy?", "response": "It is Rome.", "keys": ["Rome"]}, {"prompt": "Hi", "response": "Hello"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_rows(path, "generation") == rows
    assert os.path.exists(path)
