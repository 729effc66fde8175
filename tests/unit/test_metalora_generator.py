"""The meta-LoRA generator: shapes, parameter budget, save/load, determinism, and bad input through the CLI.

The bank here is real PEFT adapter folders on MiniLM (factors drawn at random, no training: what is
tested is the generator's arithmetic and its files) beside real staged tasks from the chatterbot corpus.
"""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from taskloom.artifacts import sha256_file
from taskloom.cli import main
from taskloom.data.rows import write_rows
from taskloom.metalora.generator import (
    CONFIG,
    MAX_PARAMS,
    WEIGHTS,
    condition,
    cores,
    count_params,
    fit_basis,
    load_generator,
    save_generator,
    train_generator,
)
from taskloom.tasks import corpora
from taskloom.tasks.catalog import build_task
from taskloom.train.lora import TARGET_MODULES

PAIRS = [
    ("ai", "emotion", "seen"),
    ("coding", "trivia", "seen"),
    ("humor", "science", "seen"),
    ("money", "sports", "val"),
]
RANK = 4
CANDIDATES = ((8, 32, "gelu", 1e-2), (4, 16, "none", 1e-1))
SFT = ((0, 0.0), (3, 1e-3))  # no fine-tuning, or 3 steps: the val task chooses


def _texts() -> dict[str, list[str]]:
    by: dict[str, list[str]] = {}
    for topic, conv in corpora.chatterbot_conversations():
        by.setdefault(topic, []).extend(u for u in conv if len(u.split()) >= 2)
    return by


def _stage(folder: Path, name: str, a: str, b: str, by: dict, n: int = 10) -> dict:
    rows = [{"text": t, "label": lab} for lab in (a, b) for t in sorted(set(by[lab]))[: 2 * n]]
    write_rows(folder / "train.jsonl", rows[0::2])
    write_rows(folder / "eval.jsonl", rows[1::2])
    spec = {
        "name": name,
        "type": "classification",
        "description": f"Decide whether a chatbot utterance is about {a} or about {b}.",
        "labels": [a, b],
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "base_model": "minilm",
    }
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    return spec


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    """bank.json + tasks/ + adapters/<name>/adapter (PEFT save_pretrained of random LoRA factors)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from taskloom.models.encoder import load_encoder

    root = tmp_path_factory.mktemp("bank")
    by = _texts()
    entries = []
    for i, (a, b, tier) in enumerate(PAIRS):
        name = f"topic-{a}-{b}"
        spec = _stage(root / "tasks" / name, name, a, b, by)
        _tok, model = load_encoder("minilm")
        with warnings.catch_warnings():  # a transformers deprecation notice raised inside PEFT
            warnings.simplefilter("ignore", FutureWarning)
            peft = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=TARGET_MODULES))
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        with warnings.catch_warnings():  # transformers' own deprecation notice inside PEFT's save
            warnings.simplefilter("ignore", FutureWarning)
            peft.save_pretrained(str(root / "adapters" / name / "adapter"))
        entries.append({**spec, "tier": tier, "corpus": "chatterbot", "rows": 40, "adapter": f"adapters/{name}"})
    bank = {"base": "minilm", "rank": RANK, "targets": TARGET_MODULES, "seed": 0, "tasks": entries}
    (root / "bank.json").write_text(json.dumps(bank))
    return root


@pytest.fixture(scope="module")
def generator(bank, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / "generator"
    config = train_generator(bank, out, seed=0, candidates=CANDIDATES, steps=40, progress=False, sft=SFT)
    return out, config


def _cond(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=384).astype(np.float32)
    return condition(d / np.linalg.norm(d), None)


def test_factors_have_the_lora_shapes_of_minilm(generator):
    gen = load_generator(generator[0])
    factors = gen.factors(_cond())
    assert len(factors) == 36  # 6 layers x (query, key, value, attention output, intermediate, output)
    for module, (a, b) in factors.items():
        if module.endswith("intermediate.dense"):
            out_f, in_f = 1536, 384
        elif module.endswith(".output.dense") and "attention" not in module:
            out_f, in_f = 384, 1536
        else:
            out_f, in_f = 384, 384
        rank = gen.config["rank"]  # the generator's basis size: the whole U·C·Vᵀ
        assert a.shape == (rank, in_f), module
        assert b.shape == (out_f, rank), module
        assert float((b @ a).abs().sum()) > 0


def test_parameter_budget_and_config(generator):
    out, config = generator
    gen = load_generator(out)
    comps = gen.components.numpy()
    basis = {m: (u.numpy(), v.numpy()) for m, (u, v) in gen.basis.items()}
    assert config["parameters"] == count_params(gen.net, basis, comps) < MAX_PARAMS
    saved = json.loads((out / CONFIG).read_text())
    assert saved["base"]["name"] == "minilm" and len(saved["base"]["weights_sha256"]) == 64
    assert saved["task_types"] == ["classification"] and saved["bank_rank"] == RANK
    assert saved["rank"] == saved["basis_size"] in (8, 4)
    assert saved["targets"] == TARGET_MODULES and saved["version"] == 1
    assert saved["seen_tasks"] == ["topic-ai-emotion", "topic-coding-trivia", "topic-humor-science"]
    assert [c["basis_size"] for c in saved["selection"]] == [8, 4]  # both candidates scored on the val task
    tuning = saved["sft"]  # both fine-tuning lengths scored on the val task, the better one kept
    assert [c["steps"] for c in tuning["candidates"]] == [0, 3]
    best = max(tuning["candidates"], key=lambda c: c["val_metric"])
    assert tuning["chosen_steps"] == best["steps"] and 0.0 <= tuning["val_metric_base"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == [CONFIG, CONFIG + ".sha256", WEIGHTS, WEIGHTS + ".sha256"]


def test_save_load_round_trip(generator, tmp_path):
    gen = load_generator(generator[0])
    save_generator(tmp_path / "copy", gen)
    again = load_generator(tmp_path / "copy")
    for m, (a, b) in gen.factors(_cond(3)).items():
        a2, b2 = again.factors(_cond(3))[m]
        assert np.array_equal(a.numpy(), a2.numpy()) and np.array_equal(b.numpy(), b2.numpy())


def test_condition_changes_the_adapter(generator):
    gen = load_generator(generator[0])
    one, two = gen.factors(_cond(1)), gen.factors(_cond(2))
    m = gen.modules[0]
    assert not np.allclose((one[m][1] @ one[m][0]).numpy(), (two[m][1] @ two[m][0]).numpy())


def test_fine_tuning_sees_the_adapter_that_is_emitted(generator):
    """The hooks fine-tuning trains through give the encoder the outputs of the LoRA `factors` emits;
    closing the tuner leaves the bare base."""
    import torch

    from taskloom.metalora.sft import Tuner
    from taskloom.models.encoder import encode, load_encoder

    gen = load_generator(generator[0])
    tok, model = load_encoder("minilm")
    texts = ["what is the stock market", "tell me a joke about robots"]
    with torch.no_grad():
        base = encode(model, tok, texts)
        basis = {m: (u.numpy(), v.numpy()) for m, (u, v) in gen.basis.items()}
        tuner = Tuner(tok, model, basis, gen.mean.numpy(), gen.components.numpy(), 0.0, (4,))
        tuner.use(gen.net, _cond(5))
        hooked = encode(model, tok, texts)
        tuner.close()
        assert torch.equal(encode(model, tok, texts), base)
        for module, (a, b) in gen.factors(_cond(5)).items():
            model.get_submodule(module).weight += b @ a
        folded = encode(model, tok, texts)
    assert not torch.allclose(hooked, base, atol=1e-4)
    assert torch.allclose(hooked, folded, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


def test_training_is_deterministic(bank, generator, tmp_path):
    train_generator(bank, tmp_path / "again", seed=0, candidates=CANDIDATES, steps=40, progress=False, sft=SFT)
    assert sha256_file(tmp_path / "again" / WEIGHTS) == sha256_file(generator[0] / WEIGHTS)


def test_basis_holds_a_seen_delta_exactly_when_large_enough():
    rng = np.random.default_rng(0)
    deltas = [{"m": (rng.normal(size=(12, 2)), rng.normal(size=(2, 10)))} for _ in range(3)]
    basis = fit_basis(deltas, 6)  # 3 adapters of rank 2: their column and row spaces fit in 6
    u, v = basis["m"]
    b, a = deltas[1]["m"]
    c = cores(deltas[1], basis).reshape(6, 6)
    assert np.allclose(u @ c @ v.T, b @ a)


# ---- bad input: one line on stderr, exit 2, nothing under --out ---------------------------------------
def _run(capsys, *args) -> tuple[int, str]:
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _bad(capsys, task: Path, gen: Path, out: Path, *extra) -> str:
    rc, err = _run(capsys, "generate", task, "--generator", gen, "--out", out, *extra)
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not out.exists()
    return err


@pytest.fixture
def task_yaml(bank) -> Path:
    return bank / "tasks" / "topic-money-sports" / "task.yaml"


def test_missing_generator(capsys, task_yaml, tmp_path):
    assert "no such folder" in _bad(capsys, task_yaml, tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert "missing generator.json" in _bad(capsys, task_yaml, tmp_path / "empty", tmp_path / "out")


def test_truncated_weights(capsys, generator, task_yaml, tmp_path):
    bad = tmp_path / "gen"
    shutil.copytree(generator[0], bad)
    data = (bad / WEIGHTS).read_bytes()
    (bad / WEIGHTS).write_bytes(data[: len(data) // 2])
    assert "sha256 does not match" in _bad(capsys, task_yaml, bad, tmp_path / "out")
    (bad / (WEIGHTS + ".sha256")).unlink()  # no side digest: the config's digest still catches it
    assert "sha256 does not match" in _bad(capsys, task_yaml, bad, tmp_path / "out")


def test_bad_config_json(capsys, generator, task_yaml, tmp_path):
    bad = tmp_path / "gen"
    shutil.copytree(generator[0], bad)
    (bad / CONFIG).write_text('{"version": 1, "base": ')
    assert "not valid JSON" in _bad(capsys, task_yaml, bad, tmp_path / "out")


def test_generator_for_another_base(capsys, generator, task_yaml, tmp_path):
    bad = tmp_path / "gen"
    shutil.copytree(generator[0], bad)
    cfg = json.loads((bad / CONFIG).read_text())
    cfg["base"] = {"name": "other-encoder", "weights_sha256": "0" * 64}
    (bad / CONFIG).write_text(json.dumps(cfg))
    assert "built for base model 'other-encoder'" in _bad(capsys, task_yaml, bad, tmp_path / "out")


def test_task_type_not_trained_for(capsys, generator, tmp_path):
    spec, train, eval_ = build_task("lee-similarity")
    write_rows(tmp_path / "train.jsonl", train[:8])
    write_rows(tmp_path / "eval.jsonl", eval_[:8])
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    err = _bad(capsys, tmp_path / "task.yaml", generator[0], tmp_path / "out")
    assert "trained for classification tasks" in err and "pair_similarity" in err


def test_more_shots_than_train_rows(capsys, generator, task_yaml, tmp_path):
    err = _bad(capsys, task_yaml, generator[0], tmp_path / "out", "--shots", "21")
    assert "--shots 21" in err and "only 20 rows" in err


def test_train_generator_without_a_bank(capsys, tmp_path):
    rc, err = _run(capsys, "metalora", "train-generator", "--bank", tmp_path, "--out", tmp_path / "g")
    assert rc == 2 and "no bank.json" in err and err.count("\n") == 1
    assert not (tmp_path / "g").exists()
