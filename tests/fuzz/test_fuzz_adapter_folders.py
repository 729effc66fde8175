"""Adapter folders (taskloom.serve.adapters.check_adapter, then taskloom.serve.lora.read_lora, what the Triton
model loads): a real PEFT folder with a head, damaged one way per case: a missing or truncated safetensors
(digest stale or rewritten to match), flipped bytes, wrong tensor shapes, a dropped or extra tensor, a pickle
`.bin` that must never be loaded, mutated adapter_config.json / head.json / task.json (another base included)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from conftest import TIERS_E2E
from hypothesis import strategies as st
from mutations import Case, byte_mutations, doc_mutations, to_json

from taskloom.artifacts import write_digest
from taskloom.serve.adapters import check_adapter
from taskloom.serve.lora import read_lora

FILES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.safetensors.sha256",
    "head.json",
    "head.safetensors",
    "head.safetensors.sha256",
    "task.json",
]
TENSORS = ["adapter_model.safetensors", "head.safetensors"]
JSONS = ["adapter_config.json", "head.json", "task.json"]
WIDE = "{wide}"  # a model folder 768 wide: not a base MiniLM's adapters fit


class Trap:
    """Unpickling this creates the sentinel file: proof that a `.bin` was loaded."""

    def __init__(self, sentinel: str):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (Path(self.sentinel),))


def _read_json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


@st.composite
def adapter_case(draw, valid: Path) -> Case:
    kind = draw(
        st.sampled_from(
            [
                "unchanged",
                "missing file",
                "truncated",
                "truncated, digest rewritten",
                "flipped byte",
                "wrong shape",
                "dropped tensor",
                "extra tensor",
                "pickle .bin",
                "json field",
                "json bytes",
                "another base",
            ]
        )
    )
    if kind == "unchanged":
        return Case(kind, valid=True)
    if kind == "missing file":
        return Case(kind, (draw(st.sampled_from(FILES)),))
    if kind in ("truncated", "truncated, digest rewritten", "flipped byte"):
        name = draw(st.sampled_from(TENSORS))
        at = draw(st.integers(min_value=0, max_value=(valid / name).stat().st_size - 1))
        return Case(kind, (name,), extra={"at": at}, valid=False if kind != "truncated, digest rewritten" else None)
    if kind in ("wrong shape", "dropped tensor", "extra tensor"):
        name = draw(st.sampled_from(TENSORS))
        from safetensors.numpy import load_file

        keys = sorted(load_file(valid / name))
        return Case(
            kind,
            (name, draw(st.sampled_from(keys))),
            extra={"how": draw(st.sampled_from(["T", "rank+1", "3d", "empty", "scalar"]))},
        )
    if kind == "pickle .bin":
        return Case(kind, (), extra={"drop_safetensors": draw(st.booleans())})
    if kind == "json field":
        name = draw(st.sampled_from(JSONS))
        m = draw(doc_mutations(_read_json(valid, name)))
        return Case(f"{name} {m.kind}", (name, *m.path), data=to_json(m.doc))
    if kind == "json bytes":
        name = draw(st.sampled_from(JSONS))
        how, data = draw(byte_mutations((valid / name).read_bytes()))
        return Case(f"{name} {how}", (name,), data=data)
    base = draw(st.sampled_from(["smollm2", WIDE, "minilm", "bert-base-uncased", "/nonexistent/model", "../../etc"]))
    valid = {"smollm2": False, WIDE: False, "minilm": True}.get(base)
    return Case(kind, (draw(st.sampled_from(["adapter_config.json", "task.json"])),), extra={"base": base}, valid=valid)


def apply(case: Case, folder: Path, sentinel: Path, wide: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    kind, path = case.kind, case.path
    if kind == "unchanged":
        return
    if kind == "missing file":
        (folder / path[0]).unlink()
    elif kind.startswith("truncated"):
        f = folder / path[0]
        f.write_bytes(f.read_bytes()[: case.extra["at"]])
        if kind == "truncated, digest rewritten":
            write_digest(f)
    elif kind == "flipped byte":
        f = folder / path[0]
        data = bytearray(f.read_bytes())
        data[case.extra["at"]] ^= 0x55
        f.write_bytes(bytes(data))
    elif kind in ("wrong shape", "dropped tensor", "extra tensor"):
        name, key = path
        tensors = load_file(folder / name)
        t = tensors[key]
        if kind == "dropped tensor":
            del tensors[key]
        elif kind == "extra tensor":
            tensors["base_model.model.encoder.layer.0.output.dense.weight"] = np.ones((4, 4), dtype=t.dtype)
        else:
            how = case.extra["how"]
            tensors[key] = {
                "T": np.ascontiguousarray(t.T),
                "rank+1": np.concatenate([t, t[:1]]) if t.ndim else t,
                "3d": t[None],
                "empty": np.zeros((0,) + t.shape[1:], dtype=t.dtype),
                "scalar": np.array(1.0, dtype=t.dtype),
            }[how]
        save_file(tensors, str(folder / name))
        write_digest(folder / name)  # a consistent digest: the shapes themselves must be caught
    elif kind == "pickle .bin":
        for name in ("adapter_model.bin", "head.bin", "pytorch_model.bin"):
            (folder / name).write_bytes(pickle.dumps(Trap(str(sentinel))))
        if case.extra["drop_safetensors"]:
            (folder / "adapter_model.safetensors").unlink()
    elif kind == "another base":
        f = folder / path[0]
        doc = json.loads(f.read_text())
        doc["base_model_name_or_path" if path[0] == "adapter_config.json" else "base"] = case.extra["base"].replace(
            WIDE, str(wide)
        )
        f.write_text(json.dumps(doc))
    else:  # json field / json bytes: the file's new bytes
        (folder / path[0]).write_bytes(case.data)


@pytest.mark.parametrize("tier", TIERS_E2E)
def test_adapter_folders(fuzz, real_adapters, tmp_path, tier):
    valid = real_adapters["senti"]
    sentinel = tmp_path / "a-pickle-was-loaded"
    folder = tmp_path / "senti"
    wide = tmp_path / "wide-model"
    wide.mkdir()
    (wide / "config.json").write_text(json.dumps({"hidden_size": 768}))

    def check(case):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(valid, folder)
        apply(case, folder, sentinel, wide)
        try:
            info = check_adapter(folder, dim=384)
            factors = read_lora(folder)
            assert info["name"] and factors
        finally:
            assert not sentinel.exists(), "a pickle file was loaded"

    def names(case, message):
        return str(folder) in message or message.startswith("adapter name")

    fuzz("adapter folders", adapter_case(valid), check, tier, names=names)
