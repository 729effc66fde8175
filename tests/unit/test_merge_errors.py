"""Every bad merge input: one line on stderr, exit 2 through the CLI, nothing in --out, inputs untouched."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from merge_helpers import make_adapter, write_merge_yaml
from safetensors.numpy import load_file, save_file

from taskloom.artifacts import sha256_file
from taskloom.cli import main


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    return {"a": make_adapter(root / "a", 0, task="sent"), "b": make_adapter(root / "b", 1, r=2, alpha=4, task="topic")}


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _poison(adapter, key_part="lora_B", value=np.nan):
    path = adapter / "adapter_model.safetensors"
    t = load_file(str(path))
    key = next(k for k in sorted(t) if key_part in k)
    t[key] = t[key].copy()
    t[key].flat[3] = value
    save_file(t, str(path))
    return adapter


def _other_base(tmp_path):
    """A small BERT with random weights: another base model, different shapes."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "tiny-bert"
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    BertModel(cfg).save_pretrained(folder)
    return folder


def _adapter_on(base_folder, dst, drop_recorded_base=False):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_pretrained(base_folder), LoraConfig(r=2, lora_alpha=4, target_modules=["query"]))
    model.save_pretrained(dst)
    if drop_recorded_base:
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = None
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def _nan_full_model(tmp_path):
    """MiniLM saved as a full model with one infinite weight deep inside (found only while streaming)."""
    from transformers import AutoModel

    from taskloom.models.registry import resolve_base

    folder = tmp_path / "nan-full"
    AutoModel.from_pretrained(resolve_base("minilm")).save_pretrained(folder)
    t = load_file(str(folder / "model.safetensors"))
    key = "encoder.layer.3.output.dense.weight"
    t[key] = t[key].copy()
    t[key][0, 0] = np.inf
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _edit_config(src, dst, **changes):
    folder = _copy(src, dst)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    return folder


def _without(src, dst, name):
    folder = _copy(src, dst)
    (folder / name).unlink()
    return folder


def _text(path, text):
    path.write_text(text)
    return path


# name -> (build(tmp, a, b) -> merge.yaml path, the words the one-line error must contain)
CASES = {
    "missing adapter folder": (lambda t, a, b: _y(t, "linear", [(t / "nope", 1)]), "folder not found"),
    "missing weights file": (lambda t, a, b: _y(t, "linear", [(_without(a, t / "x", "adapter_model.safetensors"), 1)]),
                             "missing adapter_model.safetensors"),
    "missing config file": (lambda t, a, b: _y(t, "linear", [(_without(a, t / "x", "adapter_config.json"), 1)]),
                            "missing adapter_config.json"),
    "folder with nothing": (lambda t, a, b: _y(t, "linear", [((t / "e").mkdir() or t / "e", 1)]), "neither a LoRA adapter"),
    "adapter config not json": (lambda t, a, b: _y(t, "linear", [(_text(_copy(a, t / "x") / "adapter_config.json", "{no").parent, 1)]),
                                "not valid JSON"),
    "recorded base is another model": (lambda t, a, b: _y(t, "task_arithmetic", [(a, 1), (_adapter_on(_other_base(t), t / "x"), 1)]),
                                       "not on 'minilm'"),
    "shapes of another base": (lambda t, a, b: _y(t, "task_arithmetic", [(a, 1), (_adapter_on(_other_base(t), t / "x", True), 1)]),
                               "different base model"),
    "full model of another base": (lambda t, a, b: _y(t, "task_arithmetic", [(a, 1), (_other_base(t), 1)]), "hidden_size"),
    "nan in an adapter": (lambda t, a, b: _y(t, "linear", [(a, 1), (_poison(_copy(b, t / "x")), 1)]), "has NaN"),
    "inf in an adapter A": (lambda t, a, b: _y(t, "linear", [(_poison(_copy(b, t / "x"), "lora_A", np.inf), 1)]), "NaN or infinite"),
    "inf in a full model, found while streaming": (lambda t, a, b: _y(t, "task_arithmetic", [(a, 1), (_nan_full_model(t), 1)]),
                                                   "encoder.layer.3.output.dense.weight has NaN or infinite"),
    "dora adapter": (lambda t, a, b: _y(t, "linear", [(_edit_config(a, t / "x", use_dora=True), 1)]), "DoRA"),
    "rank disagrees with config": (lambda t, a, b: _y(t, "linear", [(_edit_config(a, t / "x", r=16), 1)]), "r=16"),
    "linear weights sum to zero": (lambda t, a, b: _y(t, "linear", [(a, 1), (b, -1)]), "sum to zero"),
    "density zero": (lambda t, a, b: _y(t, "ties", [(a, 1), (b, 1)], parameters={"density": 0}),
                     "parameters.density: must be in (0, 1]"),
    "density above one": (lambda t, a, b: _y(t, "dare_ties", [(a, 1)], parameters={"density": 1.5}), "must be in (0, 1], got 1.5"),
    "unknown method": (lambda t, a, b: _y(t, "slerp_of_dreams", [(a, 1)]), "known: linear, task_arithmetic, ties"),
    "unknown parameter": (lambda t, a, b: _y(t, "task_arithmetic", [(a, 1)], parameters={"lamda": 0.5}),
                          "not a parameter of task_arithmetic"),
    "empty adapter list": (lambda t, a, b: _y(t, "linear", []), "adapters"),
    "unknown base model": (lambda t, a, b: _text(t / "m.yaml", f"method: linear\nbase_model: gpt-17\nadapters: [{a}]\n"),
                           "unknown base model 'gpt-17'"),
    "full model input for adapter output": (lambda t, a, b: _y(t, "task_arithmetic", [(a, 1), (_nan_full_model(t), 1)], output="adapter"),
                                            "needs LoRA adapters as inputs"),
    "non-numeric weight": (lambda t, a, b: _text(t / "m.yaml", f"method: linear\nadapters: [{{path: {a}, weight: heavy}}]\n"),
                           "adapters.0.weight"),
    "malformed yaml": (lambda t, a, b: _text(t / "m.yaml", "method: [linear\n"), "malformed YAML"),
}


def _y(tmp_path, method, ins, **extra):
    return write_merge_yaml(tmp_path / "merge.yaml", method, ins, **extra)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_and_writes_nothing(tmp_path, good, capsys, name):
    before = {p: sha256_file(p) for d in good.values() for p in d.iterdir()}
    build, expected = CASES[name]
    config = build(tmp_path, good["a"], good["b"])
    out = tmp_path / "runs" / "merged"
    capsys.readouterr()
    code = main(["merge", str(config), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err, err
    assert not out.exists()
    assert not list(out.parent.glob(".merged*")) if out.parent.exists() else True
    assert {p: sha256_file(p) for p in before} == before


def test_existing_out_that_is_not_a_merge_is_refused_and_kept(tmp_path, good, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    config = write_merge_yaml(tmp_path / "m.yaml", "linear", [(good["a"], 1.0)])
    assert main(["merge", str(config), "--out", str(out)]) == 2
    assert "not an earlier merge output" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_out_inside_an_input_is_refused(tmp_path, good, capsys):
    config = write_merge_yaml(tmp_path / "m.yaml", "linear", [(good["a"], 1.0)])
    assert main(["merge", str(config), "--out", str(good["a"] / "merged")]) == 2
    assert "overlaps an input" in capsys.readouterr().err and not (good["a"] / "merged").exists()


def test_a_failed_merge_keeps_the_previous_output(tmp_path, good, capsys):
    out = tmp_path / "merged"
    ok = write_merge_yaml(tmp_path / "ok.yaml", "linear", [(good["a"], 1.0)])
    assert main(["merge", str(ok), "--out", str(out)]) == 0
    digest = sha256_file(out / "model.safetensors")
    bad = _poison(_copy(good["b"], tmp_path / "nan"))
    config = write_merge_yaml(tmp_path / "bad.yaml", "linear", [(good["a"], 1.0), (bad, 1.0)])
    assert main(["merge", str(config), "--out", str(out)]) == 2
    assert sha256_file(out / "model.safetensors") == digest
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
