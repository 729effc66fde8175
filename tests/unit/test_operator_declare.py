"""What `taskloom deploy --kubernetes` declares: the ModelDeployment spec from adapter folders, without a cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from taskloom.artifacts import sha256_file
from taskloom.errors import UserError
from taskloom.operator.declare import Declaration, spec_of

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serve_helpers import make_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {n: make_adapter(root, n, seed) for n, seed in (("senti", 1), ("qa", 2))}


def entry(folder: Path, name: str) -> dict:
    return {"name": name, "path": str(folder.resolve()), "sha256": sha256_file(folder / "adapter_model.safetensors")}


def test_a_new_spec_names_the_model_and_the_adapter_with_its_files_sha256(adapters):
    d = Declaration(model="taskloom", repository="/shared/repo", version=3, add=(adapters["qa"],), canary=False)
    spec = spec_of(None, d)
    assert spec["model"] == {"name": "taskloom", "repository": "/shared/repo", "version": "3"}
    assert spec["adapters"] == [entry(adapters["qa"], "qa")]  # task.json's task names it
    assert spec["rollout"] == {"canary": False} and "engine" not in spec


def test_adding_replaces_by_name_and_removing_keeps_the_rest(adapters):
    current = {"adapters": [{"name": "qa", "path": "/old/qa", "sha256": "0" * 64}, entry(adapters["senti"], "senti")]}
    spec = spec_of(current, Declaration(model="taskloom", repository="/r", add=(adapters["qa"],)))
    assert spec["adapters"] == [entry(adapters["qa"], "qa"), entry(adapters["senti"], "senti")]
    spec = spec_of(current, Declaration(model="taskloom", repository="/r", remove=("qa",)))
    assert spec["adapters"] == [entry(adapters["senti"], "senti")]
    named = spec_of(None, Declaration(model="taskloom", repository="/r", add=(adapters["qa"],), adapter_name="faq"))
    assert [a["name"] for a in named["adapters"]] == ["faq"]


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        (dict(repository="s3://bucket/repo"), "absolute path as the pods mount it"),
        (dict(repository="repo"), "absolute path as the pods mount it"),
        (dict(remove=("nope",)), "not declared in the ModelDeployment"),
        (dict(add_names=("senti", "qa"), adapter_name="x"), "exactly one adapter folder"),
        (dict(add_names=("qa",), remove=("qa",)), "both added and removed"),
    ],
)
def test_mistakes_are_one_line(adapters, declaration, message):
    declaration = dict(declaration)
    add = tuple(adapters[n] for n in declaration.pop("add_names", ()))
    current = {"adapters": [entry(adapters["qa"], "qa")]}
    with pytest.raises(UserError, match=message):
        spec_of(current, Declaration(model="taskloom", **{"repository": "/r", **declaration, "add": add}))


def test_weights_that_differ_from_their_digest_are_refused_and_left_as_they_are(adapters, tmp_path):
    import shutil

    folder = shutil.copytree(adapters["qa"], tmp_path / "qa")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    before = weights.read_bytes()
    with pytest.raises(UserError, match="sha256 does not match"):
        spec_of(None, Declaration(model="taskloom", repository="/r", add=(folder,)))
    assert weights.read_bytes() == before
