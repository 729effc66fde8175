"""Task, adapter, model and version names never escape their folder or URL.

Every name that becomes a path or a URL goes through one strict pattern (taskloom.serve.adapters.NAME_RE,
the task spec's pattern); each hostile name below is refused with one UserError line, through the public
functions and the CLI, and nothing appears outside the folder the call was given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.operator.spec import parse_spec
from taskloom.serve import deploy as d
from taskloom.serve.adapters import check_name
from taskloom.serve.client import TritonClient
from taskloom.serve.repository import build_repository

BAD = [
    "../x",
    "a/b",
    "..",
    ".",
    "x\x00",
    "%2e%2e",
    "%2fetc",
    "a" * 65,
    "a" * 4096,
    "\uff58",  # fullwidth x
    "\u0430dapter",  # Cyrillic a
    "x\n",
    "/abs",
    "",
    ".hidden",
    "a\\b",
    "a b",
    "__base__",
]
IDS = [repr(b)[:24] for b in BAD]
PATHS = [b for b in BAD if b != "__base__"]  # "__base__" is refused as an adapter name only (PEFT's "no adapter")
UNUSED_URL = "http://127.0.0.1:9"  # nothing listens: a name check must come before any request


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def box(tmp_path):
    """(outside, inside): a call may write under inside only; outside is checked to stay as it was."""
    inside = tmp_path / "a" / "b" / "repo"
    inside.mkdir(parents=True)
    return tmp_path, inside


def one_line(e: UserError) -> str:
    text = str(e)
    assert "\n" not in text and "\x00" not in text, text
    return text


@pytest.mark.parametrize("name", BAD, ids=IDS)
def test_check_name_refuses(name):
    with pytest.raises(UserError) as e:
        check_name(name)
    one_line(e.value)


@pytest.mark.parametrize("name", ["senti", "rt-sentiment", "a.b_c-1", "x" * 64, "_x"])
def test_check_name_accepts_plain_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", PATHS, ids=[repr(b)[:24] for b in PATHS])
def test_model_name_refused_by_every_repository_writer(box, name):
    outside, repo = box
    before = files_under(outside)
    calls = [
        lambda: d.deploy(repo, UNUSED_URL, "minilm", name=name),
        lambda: d.publish_version(repo, "minilm", name=name),
        lambda: d.rollback(repo, UNUSED_URL, name=name),
        lambda: build_repository("minilm", repo, name=name),
        lambda: TritonClient(UNUSED_URL, model=name),
    ]
    for call in calls:
        with pytest.raises(UserError) as e:
            call()
        one_line(e.value)
    assert files_under(outside) == before


@pytest.mark.parametrize("name", BAD, ids=IDS)
def test_adapter_name_to_remove_refused(box, name):
    outside, repo = box
    with pytest.raises(UserError) as e:
        d.deploy(repo, UNUSED_URL, None, name="taskloom", remove=[name])
    one_line(e.value)
    assert files_under(outside) <= {"a", "a/b", "a/b/repo", "a/b/repo/.taskloom.deploy.lock"}


@pytest.mark.parametrize("name", BAD, ids=IDS)
def test_model_deployment_names_refused(name):
    for spec in (
        {"model": {"name": name, "repository": "/shared/models"}},
        {
            "model": {"name": "m", "repository": "/shared/models"},
            "adapters": [{"name": name, "path": "/a", "sha256": "a" * 64}],
        },
    ):
        with pytest.raises(UserError) as e:
            parse_spec(spec)
        one_line(e.value)


@pytest.mark.parametrize("name", BAD, ids=IDS)
def test_cli_refuses_with_one_line(box, capsys, name):
    if "\x00" in name:
        pytest.skip("a NUL byte cannot be an argv element")
    outside, repo = box
    before = files_under(outside)
    for argv in (
        *([["deploy", "minilm", "--repo", str(repo), "--url", UNUSED_URL, "--name", name]] if name in PATHS else []),
        ["deploy", "--repo", str(repo), "--url", UNUSED_URL, "--remove", name],
        ["infer", "--url", UNUSED_URL, "--model", name, "hello"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert files_under(outside) - before <= {"a/b/repo/.taskloom.deploy.lock"}


@pytest.mark.parametrize("name", BAD, ids=IDS)
def test_task_name_refused_through_the_cli(tmp_path, capsys, name):
    task = tmp_path / "task"
    task.mkdir()
    rows = [{"text": f"row {i}", "label": ["fresh", "rotten"][i % 2]} for i in range(8)]
    for split in ("train", "eval"):
        (task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {
        "name": name,
        "type": "classification",
        "description": "d",
        "labels": ["fresh", "rotten"],
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
    }
    (task / "task.yaml").write_text(yaml.safe_dump(doc))
    before = files_under(tmp_path)
    assert main(["validate", str(task / "task.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert files_under(tmp_path) - before <= {"out"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    from s3_server import MotoS3

    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("key", ["../escaped", "m/../../escaped", "/abs/escaped", "m//x"])
def test_pull_refuses_keys_that_climb_out(tmp_path, monkeypatch, moto, key):
    """A bucket is not trusted: an object whose key would land outside the local folder is refused."""
    import boto3

    from taskloom import objectstore

    for k, v in moto.env.items():
        monkeypatch.setenv(k, v)
    bucket = f"models-{abs(hash(key)) % 10**8}"
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=f"repo/{key}", Body=b"x")
    local = tmp_path / "a" / "b" / "local"
    with pytest.raises(UserError) as e:
        objectstore.pull(f"s3://{bucket}/repo", local)
    one_line(e.value)
    assert not any(p.name == "escaped" for p in tmp_path.rglob("*"))
    assert not os.path.exists("/abs/escaped")
