"""The version serving a ModelDeployment's spec: found in the repository, or written once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from taskloom.artifacts import sha256_file
from taskloom.operator.spec import parse_spec
from taskloom.operator.versions import SpecRefused, find, resolve
from taskloom.serve.deploy import read_state
from taskloom.serve.repository import build_repository, version_numbers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serve_helpers import make_adapter


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("opv")
    build_repository("minilm", root / "repo")
    return root / "repo", make_adapter(root, "senti", 1, ["fresh", "rotten"])


def spec(repo, adapters=()):
    return parse_spec({"model": {"name": "taskloom", "repository": str(repo)}, "adapters": list(adapters)})


def test_base_then_adapter_written_once_then_found_then_removed(repo):
    root, adapter = repo
    folder = root / "taskloom"
    assert resolve(spec(root)).version == 1
    decl = {"name": "senti", "path": str(adapter), "sha256": sha256_file(adapter / "adapter_model.safetensors")}
    first = resolve(spec(root, [decl]))
    assert first.written and first.version == 2 and first.adapters == ("senti",)
    again = resolve(spec(root, [decl]))  # a restarted operator: found, not written again
    assert not again.written and again.version == 2 and again.revision == first.revision
    assert version_numbers(folder) == [1, 2]
    assert read_state(folder)["versions"]["2"]["status"] == "candidate"
    assert resolve(spec(root)).version == 1  # adapter removed: the base version serves it


def test_declared_sha256_that_the_file_lacks_is_refused_before_writing(repo):
    root, adapter = repo
    before = version_numbers(root / "taskloom")
    bad = {"name": "senti", "path": str(adapter), "sha256": "0" * 64}
    with pytest.raises(SpecRefused, match="sha256") as e:
        resolve(spec(root, [bad]))
    assert e.value.reason == "AdapterDigestMismatch"
    assert find(spec(root, [bad])) is None
    assert version_numbers(root / "taskloom") == before


def test_missing_model_and_version(repo, tmp_path):
    root, _ = repo
    with pytest.raises(SpecRefused) as e:
        resolve(spec(tmp_path))
    assert e.value.reason == "ModelMissing"
    with pytest.raises(SpecRefused) as e:
        resolve(parse_spec({"model": {"name": "taskloom", "repository": str(root), "version": "9"}}))
    assert e.value.reason == "VersionMissing"


def test_files_only_publish_serves_the_version_it_wrote(tmp_path):
    """publish_version(serve=True): written, then served on disk (config.pbtxt, versions.json) under one
    lock, so another deploy's version cannot come between the two."""
    from taskloom.serve.deploy import publish_version

    root = tmp_path / "repo"
    build_repository("minilm", root)
    adapter = make_adapter(tmp_path, "senti", 1, ["fresh", "rotten"])
    report = publish_version(root, adapter, serve=True)
    state = read_state(root / "taskloom")
    assert report["version"] == 2 and report["adapter"] == "senti" and state["serving"] == 2
    assert state["versions"]["2"]["status"] == "serving" and state["versions"]["1"]["status"] == "retired"
    assert [h["result"] for h in state["history"][-2:]] == ["candidate", "serving"]
    assert "version_policy: { specific: { versions: [ 2 ] } }" in (root / "taskloom" / "config.pbtxt").read_text()
    assert publish_version(root, "minilm")["version"] == 3 and read_state(root / "taskloom")["serving"] == 2
