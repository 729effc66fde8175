"""merge.yaml (taskloom.specs.load_merge and the checks a merge makes before it reads a tensor: method,
parameters, weights, base model, each input folder and its recorded base): a real merge.yaml over two real
adapters, mutated field by field and byte by byte."""

from __future__ import annotations

import json
import re
import shutil
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import TIERS_E2E
from hypothesis import strategies as st
from mutations import Case, byte_mutations, doc_mutations, to_yaml

from taskloom.merge.merger import _open_input
from taskloom.merge.methods import get_method
from taskloom.merge.weights import KeyMatcher, ModelWeights, weight_files
from taskloom.models.registry import resolve_base
from taskloom.specs import load_merge


def valid_doc(adapters) -> dict:
    return {
        "method": "ties",
        "base_model": "minilm",
        "adapters": [{"path": str(adapters["senti"]), "weight": 0.6}, str(adapters["qa"])],
        "parameters": {"density": 0.5, "lambda": 1.0, "seed": 3},
        "output": "adapter",
        "rank": 8,
        "tasks": [],
    }


def cases(valid: dict) -> st.SearchStrategy[Case]:
    data = to_yaml(valid)
    return st.one_of(
        st.just(Case("unchanged", (), valid, data, valid=True)),
        st.sampled_from(["linear", "task_arithmetic", "dare_ties", "delta_guided", "magnitude_prune"]).map(
            lambda m: Case(
                "other method", ("method",), None, to_yaml({**valid, "method": m, "parameters": {}}), valid=True
            )
        ),
        doc_mutations(valid).map(lambda c: Case(c.kind, c.path, c.doc, to_yaml(c.doc))),
        doc_mutations(valid).map(lambda c: Case(c.kind, c.path, c.doc, to_yaml(c.doc))),
        byte_mutations(data).map(lambda kb: Case(kb[0], (), None, kb[1])),
        st.tuples(st.sampled_from(["task.json", "adapter_config.json"]), st.sampled_from(RECORDED)).map(
            lambda fb: Case("recorded base", fb, valid=_expected(*fb))
        ),
    )


def _expected(file: str, base: str) -> bool | None:
    """task.json's `base` is the record a merge trusts first (adapter_config.json's only without one)."""
    if file == "task.json":
        return {"smollm2": False, "minilm": True, "{minilm_dir}": True, "{other_dir}": False}.get(base)
    return None


RECORDED = ["smollm2", "minilm", "{minilm_dir}", "{other_dir}", "/nonexistent/model", "", "bert-base-uncased"]


def with_recorded_base(case: Case, valid: dict, real: Path, work: Path) -> bytes:
    """A copy of the first input whose task.json / adapter_config.json records `case.path[1]` as its base."""
    file, base = case.path
    folder = work / "recorded"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(real, folder)
    other = work / "other-model"
    other.mkdir(exist_ok=True)
    (other / "config.json").write_text(json.dumps({"hidden_size": 768, "model_type": "bert"}))
    base = base.replace("{minilm_dir}", str(resolve_base("minilm"))).replace("{other_dir}", str(other))
    doc = json.loads((folder / file).read_text())
    doc["base" if file == "task.json" else "base_model_name_or_path"] = base
    (folder / file).write_text(json.dumps(doc))
    return to_yaml({**valid, "adapters": [str(folder), *valid["adapters"][1:]]})


@pytest.mark.parametrize("tier", TIERS_E2E)
def test_merge_yaml(fuzz, real_adapters, tmp_path, tier):
    path = tmp_path / "merge.yaml"
    base_dir = resolve_base("minilm")

    def check(case):
        if case.kind == "recorded base":
            case.data = with_recorded_base(case, valid, real_adapters["senti"], tmp_path)
        path.write_bytes(case.data)
        spec = load_merge(path)
        method = get_method(spec.method)
        method.check([float(a.weight) for a in spec.adapters], method.parameters(spec.parameters))
        base_dir = resolve_base(spec.base_model)
        with ExitStack() as stack:
            base = ModelWeights(weight_files(base_dir), stack, f"base model {spec.base_model}")
            matcher = KeyMatcher(base.keys())
            for ref, folder in zip(spec.adapters, spec.adapter_paths()):
                _open_input(folder, f"adapter {ref.path}", spec.base_model, base_dir, base, matcher, stack)

    def names(case, message):  # the file, or the field (method, parameters.x, base model, adapter <path>)
        return message.startswith(f"{path}: ") or bool(
            re.match(r"(method|parameters\.|weights|(unknown )?base model|adapter )", message)
        )

    assert base_dir.is_dir()
    valid = valid_doc(real_adapters)
    fuzz("merge.yaml", cases(valid), check, tier, names=names)
