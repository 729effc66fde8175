"""Triton serving a model repository straight from S3 (the bundled tritonserver reads s3:// itself), against
a real local S3 server (moto), and `taskloom deploy --repo s3://...` hot-loading a new version through it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from s3_server import MotoS3
from serve_helpers import TEXTS, make_adapter, reference_adapter

from taskloom import objectstore
from taskloom.cli import main
from taskloom.models.encoder import embed_texts
from taskloom.serve.client import TritonClient
from taskloom.serve.launcher import TritonServer, find_serving_env
from taskloom.serve.repository import build_repository

pytestmark = [
    pytest.mark.e2e,  # tier: a real S3 server and a real Triton server
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # transformers' notice inside PEFT loading
]

URL = "s3://models/repo"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3repo")
    moto = MotoS3(root / "moto.log")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in moto.env.items():
            mp.setenv(k, v)
        mp.setenv("TASKLOOM_CACHE", str(root / "cache"))
        (root / "localized").mkdir()  # where Triton downloads each version it loads (an emptyDir in the chart)
        mp.setenv("TRITON_AWS_MOUNT_DIRECTORY", str(root / "localized"))
        try:
            objectstore.client().create_bucket(Bucket="models")
            objectstore.push_dir(build_repository("minilm", root / "built"), URL)
            location = objectstore.triton_url(URL)
            assert location == f"s3://{moto.endpoint}/models/repo"
            with TritonServer(URL, model_control="explicit", models=["*"], log_dir=root / "logs") as server:
                assert f"--model-repository={location}" in server.command(find_serving_env())
                yield server, root
        finally:
            moto.stop()


def test_triton_serves_the_repository_from_s3(served):
    server, root = served
    with TritonClient(server.http_url) as c:
        out = c.infer(TEXTS)
        ready = [m for m in c.repository_index() if m["name"] == "taskloom" and m.get("state") == "READY"]
    assert [m["version"] for m in ready] == ["1"]
    assert (out["embedding"] * embed_texts(TEXTS)).sum(1).min() >= 0.999
    assert any((root / "localized").rglob("model.py"))  # served from Triton's own download of the bucket


def test_deploy_through_s3_hot_loads_a_new_version(served, tmp_path, capsys):
    server, root = served
    adapter = make_adapter(tmp_path, "senti", 1, ["fresh", "rotten"])
    assert main(["deploy", str(adapter), "--repo", URL, "--url", server.http_url]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "serving" and report["version"] == 2 and report["adapters"] == ["senti"]
    assert report["canary"]["senti"]["ok"]

    with TritonClient(server.http_url) as c:
        out = c.infer(TEXTS, adapter="senti")
        ready = [m["version"] for m in c.repository_index() if m["name"] == "taskloom" and m.get("state") == "READY"]
    emb, labels, _ = reference_adapter(adapter, TEXTS)
    assert ready == ["2"]
    assert (out["embedding"] * emb).sum(1).min() >= 0.999 and out["label"] == labels

    # the bucket holds what a restarted server needs: config.pbtxt names 2, versions.json says it serves,
    # the canary's side model is gone, and the marker lists exactly the objects there
    objects = objectstore.list_objects(URL)
    assert "version_policy: { specific: { versions: [ 2 ] } }" in objectstore.get_bytes(
        URL, "taskloom/config.pbtxt"
    ).decode()
    assert json.loads(objectstore.get_bytes(URL, "taskloom/versions.json"))["serving"] == 2
    assert not [k for k in objects if k.startswith("taskloom.candidate/")]
    marker = objectstore.read_marker(URL)
    assert set(marker["files"]) == set(objects) - {objectstore.MANIFEST}

    # a fresh copy pulled from the bucket is a complete repository, and retention keeps serving + rollback
    copy = Path(tmp_path / "copy")
    objectstore.pull(URL, copy)
    assert sorted(p.name for p in (copy / "taskloom").iterdir() if p.name.isdigit()) == ["1", "2"]
    assert main(["repo", "prune", URL, "--keep", "1", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)["models"]["taskloom"]
    assert plan["delete"] == [] and plan["keep"] == {"1": "rollback target", "2": "newest 1"}


def test_deploy_step_publishes_a_built_repository_to_s3(served, tmp_path):
    """The pipelines' deploy step with an s3:// model_repository and no server: built locally, pushed whole."""
    from taskloom import steps
    from taskloom.specs import DeploySpec

    out = steps.deploy_step("minilm", tmp_path / "built", DeploySpec(model_name="fromstep", model_repository="s3://models/step"))
    assert out["published"] == ["s3://models/step/fromstep"]
    objects = objectstore.list_objects("s3://models/step")
    built = [p for p in (tmp_path / "built").rglob("*") if p.is_file() and p.name != ".taskloom-sync.json"]
    local = {str(p.relative_to(tmp_path / "built")) for p in built}  # (the sync file: push_dir's own digest cache)
    assert "fromstep/config.pbtxt" in objects and local <= set(objects)
