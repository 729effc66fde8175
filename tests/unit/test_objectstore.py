"""Object storage against a real local S3 server (moto's server mode): push/pull round trips that move only
what changed, readers that never see half a version, prune (local and S3), and bad input through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
from s3_server import MotoS3

from taskloom import objectstore
from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.serve.retention import prune

BUCKET = "models"
URL = f"s3://{BUCKET}/repo"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def s3(moto, monkeypatch, tmp_path):
    """A fresh bucket per test; the AWS environment pointing at the local server."""
    for k, v in moto.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TASKLOOM_CACHE", str(tmp_path / "cache"))
    moto.reset()
    client = boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def config(version: int) -> str:
    return f'name: "m"\nversion_policy: {{ specific: {{ versions: [ {version} ] }} }}\n'


def make_repo(root: Path, versions=(1,), serving=None, history=None) -> Path:
    """A model repository shaped as taskloom writes one (random weights stand in for a model)."""
    model = root / "m"
    for v in versions:
        add_version(model, v)
    serving = serving if serving is not None else versions[-1]
    (model / "config.pbtxt").write_text(config(serving))
    state = {"name": "m", "serving": serving, "versions": {str(v): {"status": "retired"} for v in versions},
             "history": history or []}
    state["versions"][str(serving)]["status"] = "serving"
    (model / "versions.json").write_text(json.dumps(state))
    (root / "README.txt").write_text("a repository\n")
    return root


def add_version(model: Path, v: int) -> None:
    (model / str(v) / "weights").mkdir(parents=True)
    (model / str(v) / "weights" / "model.safetensors").write_bytes(os.urandom(100_000 + v))
    (model / str(v) / "weights" / "config.json").write_text('{"hidden_size": 384}\n')  # the same in every version
    (model / str(v) / "manifest.json").write_text(json.dumps({"version": v}))


# -- URLs ----------------------------------------------------------------------------------------


def test_urls_parse_and_translate_to_triton_form():
    assert objectstore.parse_url("s3://models/a/b/") == objectstore.S3Url("models", "a/b")
    assert objectstore.parse_url("s3://models") == objectstore.S3Url("models", "")
    assert objectstore.triton_url("s3://models/repo", "http://127.0.0.1:9000") == "s3://http://127.0.0.1:9000/models/repo"
    assert objectstore.triton_url("s3://models/repo", "https://s3.example.org") == "s3://https://s3.example.org:443/models/repo"
    assert objectstore.triton_url("s3://models/repo", "") == "s3://models/repo"
    for bad in ("models/repo", "s3:/models", "s3://", "s3://Models/x", "s3://ab/x", "s3://models/a//b", "s3://models/../x"):
        with pytest.raises(UserError):
            objectstore.parse_url(bad)


# -- push and pull -------------------------------------------------------------------------------


def test_round_trip_moves_only_what_changed(tmp_path):
    src = make_repo(tmp_path / "src")
    first = objectstore.push_dir(src, URL)
    assert first["uploaded"] == len(tree(src)) and first["unchanged"] == 0

    dst = tmp_path / "dst"
    assert objectstore.pull(URL, dst)["downloaded"] == len(tree(src))
    assert tree(dst) == tree(src)

    # version 2 beside 1, config.pbtxt switched, one file edited: only those travel
    add_version(src / "m", 2)
    (src / "m" / "config.pbtxt").write_text(config(2))
    second = objectstore.push_dir(src, URL)
    assert second["copied"] == 1  # v2's config.json has v1's bytes: copied inside the bucket, not uploaded
    assert second["uploaded"] == 3  # v2's weights and manifest, config.pbtxt
    assert second["unchanged"] == len(tree(src)) - 4

    before = {rel: (dst / rel).stat().st_ino for rel in tree(dst)}
    moved: list[tuple[str, str]] = []
    again = objectstore.pull(URL, dst, on_object=lambda action, rel: moved.append((action, rel)))
    assert sorted(rel for _, rel in moved) == ["m/2/manifest.json", "m/2/weights/config.json",
                                               "m/2/weights/model.safetensors", "m/config.pbtxt"]
    assert again["unchanged"] == len(before) - 1
    assert tree(dst) == tree(src)
    assert (dst / "m" / "1" / "weights" / "model.safetensors").stat().st_ino == before["m/1/weights/model.safetensors"]
    assert objectstore.pull(URL, dst)["downloaded"] == 0

    # a removed file disappears on both sides with --delete
    (src / "README.txt").unlink()
    assert objectstore.push_dir(src, URL, delete=True)["deleted"] == 1
    assert "README.txt" not in objectstore.list_objects(URL)
    assert objectstore.pull(URL, dst, delete=True)["deleted"] == 1
    assert tree(dst) == tree(src)


def test_cli_push_and_pull(tmp_path, capsys):
    src = make_repo(tmp_path / "src")
    assert main(["repo", "push", str(src), URL]) == 0
    assert json.loads(capsys.readouterr().out)["uploaded"] == len(tree(src))
    assert main(["repo", "pull", URL, str(tmp_path / "dst")]) == 0
    assert json.loads(capsys.readouterr().out)["downloaded"] == len(tree(src))
    assert tree(tmp_path / "dst") == tree(src)


def test_objects_go_before_config_and_marker(tmp_path, s3):
    src = make_repo(tmp_path / "src", versions=(1, 2))
    order: list[str] = []
    objectstore.push_dir(src, URL, on_object=lambda action, rel: order.append(rel))
    assert order[-1] == "m/config.pbtxt"
    last_version_file = max(i for i, rel in enumerate(order) if objectstore.version_unit(rel))
    assert last_version_file < order.index("m/versions.json")
    marker = json.loads(s3.get_object(Bucket=BUCKET, Key="repo/.taskloom-manifest.json")["Body"].read())
    assert set(marker["files"]) == set(tree(src))


def test_reader_never_sees_half_a_version(tmp_path, s3):
    src = make_repo(tmp_path / "src")
    objectstore.push_dir(src, URL)
    dst = tmp_path / "dst"
    objectstore.pull(URL, dst)

    # a push of version 2 dies after two objects: readers keep seeing version 1, whole
    add_version(src / "m", 2)
    (src / "m" / "config.pbtxt").write_text(config(2))
    count = 0

    def die(action, rel):
        nonlocal count
        count += 1
        if count == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        objectstore.push_dir(src, URL, on_object=die)
    remote_config = s3.get_object(Bucket=BUCKET, Key="repo/m/config.pbtxt")["Body"].read().decode()
    assert remote_config == config(1)  # what Triton reads from the bucket still names version 1
    assert objectstore.pull(URL, dst)["downloaded"] == 0
    fresh = tmp_path / "fresh"
    objectstore.pull(URL, fresh)
    assert not (fresh / "m" / "2").exists() and not (dst / "m" / "2").exists()
    assert (fresh / "m" / "config.pbtxt").read_text() == config(1)

    # the finished push: the local copy gets version 2 as a whole folder, renamed into place
    objectstore.push_dir(src, URL)
    seen = []

    def watch(action, rel):
        if rel.startswith("m/2/"):
            seen.append((dst / "m" / "2").exists())
        if rel == "m/config.pbtxt":
            seen.append(("config", (dst / "m" / "2" / "weights" / "model.safetensors").exists()))

    objectstore.pull(URL, dst, on_object=watch)
    assert seen[:3] == [False, False, False]  # while its files come down, m/2 does not exist yet
    assert seen[-1] == ("config", True)  # config.pbtxt is replaced after version 2 is complete
    assert tree(dst) == tree(src)
    assert not [p for p in (dst / "m").iterdir() if p.name.startswith(".")]


def test_pull_refuses_objects_that_differ_from_the_marker(tmp_path, s3):
    src = make_repo(tmp_path / "src")
    objectstore.push_dir(src, URL)
    s3.put_object(Bucket=BUCKET, Key="repo/m/1/manifest.json", Body=b"changed behind the marker")
    with pytest.raises(UserError, match="kept changing"):
        objectstore.pull(URL, tmp_path / "dst")
    assert not (tmp_path / "dst" / "m" / "1").exists()


def test_pull_without_marker_compares_size_and_etag(tmp_path, s3):
    s3.put_object(Bucket=BUCKET, Key="plain/a.txt", Body=b"one")
    s3.put_object(Bucket=BUCKET, Key="plain/b/c.txt", Body=b"two")
    dst = tmp_path / "dst"
    assert objectstore.pull(f"s3://{BUCKET}/plain", dst)["downloaded"] == 2
    assert objectstore.pull(f"s3://{BUCKET}/plain", dst)["downloaded"] == 0
    s3.put_object(Bucket=BUCKET, Key="plain/a.txt", Body=b"uno")
    assert objectstore.pull(f"s3://{BUCKET}/plain", dst)["downloaded"] == 1
    assert (dst / "a.txt").read_bytes() == b"uno"
    assert objectstore.delete_prefix(f"s3://{BUCKET}/plain") == 2
    assert objectstore.list_objects(f"s3://{BUCKET}/plain") == {}


def test_follow_keeps_pulling_and_survives_a_failed_round(tmp_path):
    src = make_repo(tmp_path / "src")
    objectstore.push_dir(src, URL)
    reports: list[dict] = []
    objectstore.follow(URL, tmp_path / "dst", 0.01, rounds=2, on_report=reports.append)
    assert [r["downloaded"] for r in reports] == [len(tree(src)), 0]
    assert tree(tmp_path / "dst") == tree(src)
    objectstore.follow("s3://missing/repo", tmp_path / "other", 0.01, rounds=2, on_report=reports.append)
    assert [r.get("error", "").endswith("no such bucket 'missing'") for r in reports[2:]] == [True, True]


# -- bad input: one line, exit 2, nothing written ----------------------------------------------------


@pytest.mark.parametrize(
    "case, expect",
    [
        ("bad-url", "bad bucket name"),
        ("no-bucket", "no such bucket 'missing'"),
        ("no-credentials", "no credentials"),
        ("unreachable", "cannot reach the S3 endpoint"),
    ],
)
@pytest.mark.parametrize("verb", ["push", "pull", "prune"])
def test_bad_location_or_credentials_exit_2(tmp_path, capsys, monkeypatch, case, expect, verb):
    src = make_repo(tmp_path / "src")
    url = {"bad-url": "s3://Bad_Bucket/repo", "no-bucket": "s3://missing/repo"}.get(case, URL)
    if case == "no-credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    if case == "unreachable":
        from s3_server import _free_port

        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    dst = tmp_path / "dst"
    argv = {"push": ["repo", "push", str(src), url], "pull": ["repo", "pull", url, str(dst)],
            "prune": ["repo", "prune", url, "--keep", "1"]}[verb]
    before = tree(src)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expect in err[0], err
    assert not dst.exists() and tree(src) == before


# -- prune ---------------------------------------------------------------------------------------

HISTORY = [
    {"action": "build", "version": 1, "result": "serving"},
    {"action": "deploy", "version": 2, "from": 1, "result": "serving"},
    {"action": "deploy", "version": 3, "from": 2, "result": "serving"},
    {"action": "deploy", "version": 4, "from": 3, "result": "serving"},
    {"action": "deploy", "version": 5, "from": 4, "result": "refused"},
]


def deployed_repo(root: Path) -> Path:
    """Versions 1-5 of m: 4 serves (it replaced 3), 5 was refused."""
    return make_repo(root, versions=(1, 2, 3, 4, 5), serving=4, history=HISTORY)


def test_prune_local_keeps_newest_serving_and_rollback(tmp_path, capsys):
    repo = deployed_repo(tmp_path / "repo")
    assert main(["repo", "prune", str(repo), "--keep", "1", "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and report["models"]["m"]["delete"] == [1, 2]
    assert report["models"]["m"]["keep"] == {"3": "rollback target", "4": "serving", "5": "newest 1"}
    assert sorted(p.name for p in (repo / "m").iterdir() if p.name.isdigit()) == ["1", "2", "3", "4", "5"]

    records = tmp_path / "mdeps.yaml"
    records.write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: taskloom.dev/v1alpha1, kind: ModelDeployment, metadata: {name: canary},"
        " spec: {model: {name: m, version: '1'}}}\n"
        "- {kind: ModelDeployment, metadata: {name: other}, spec: {model: {name: other-model, version: '2'}}}\n"
    )
    assert main(["repo", "prune", str(repo), "--keep", "1", "--deployments", str(records)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"]["m"]["delete"] == [2]
    assert sorted(p.name for p in (repo / "m").iterdir() if p.name.isdigit()) == ["1", "3", "4", "5"]
    assert not [p for p in (repo / "m").iterdir() if p.name.startswith(".2")]
    state = json.loads((repo / "m" / "versions.json").read_text())
    assert state["versions"]["2"]["status"] == "pruned" and state["serving"] == 4
    assert state["history"][-1]["action"] == "prune" and state["history"][-1]["versions"] == [2]


def test_prune_keeps_what_config_names_and_never_serving(tmp_path):
    repo = deployed_repo(tmp_path / "repo")
    (repo / "m" / "config.pbtxt").write_text(config(2))  # an interrupted deploy: config.pbtxt lags behind
    report = prune(repo, keep=2)
    assert report["models"]["m"]["delete"] == [1]
    assert report["models"]["m"]["keep"][2] == "config.pbtxt"
    assert prune(repo, keep=10)["models"]["m"]["delete"] == []


def test_prune_s3(tmp_path, s3):
    repo = deployed_repo(tmp_path / "repo")
    objectstore.push_dir(repo, URL)
    report = prune(URL, keep=1, dry_run=True)
    assert report["models"]["m"]["delete"] == [1, 2]
    assert any(k.startswith("m/1/") for k in objectstore.list_objects(URL))

    report = prune(URL, keep=1)
    assert report["models"]["m"]["delete"] == [1, 2]
    left = objectstore.list_objects(URL)
    assert not [k for k in left if k.startswith(("m/1/", "m/2/"))]
    assert [k for k in left if k.startswith("m/3/")]
    marker = objectstore.read_marker(URL)
    assert marker is not None and set(marker["files"]) == set(left) - {objectstore.MANIFEST}
    state = json.loads(s3.get_object(Bucket=BUCKET, Key="repo/m/versions.json")["Body"].read())
    assert state["versions"]["1"]["status"] == "pruned" and state["serving"] == 4

    copy = tmp_path / "copy"
    objectstore.pull(URL, copy)
    assert sorted(p.name for p in (copy / "m").iterdir() if p.name.isdigit()) == ["3", "4", "5"]


@pytest.mark.parametrize(
    "text, expect",
    [
        ("kind: ModelDeployment\nspec: {model: {version: '1'}}\n", "spec.model.name missing"),
        ("kind: ModelDeployment\nspec: {model: {name: m, version: latest}}\n", "is not a number"),
        ("{not yaml", "not YAML/JSON"),
    ],
)
def test_prune_bad_deployments_file(tmp_path, capsys, text, expect):
    repo = deployed_repo(tmp_path / "repo")
    records = tmp_path / "bad.yaml"
    records.write_text(text)
    assert main(["repo", "prune", str(repo), "--keep", "1", "--deployments", str(records)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert sorted(p.name for p in (repo / "m").iterdir() if p.name.isdigit()) == ["1", "2", "3", "4", "5"]


# -- the chart: storage.type=s3 --------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
HELM = REPO_ROOT / ".tools" / "helm"


@pytest.mark.skipif(not HELM.exists(), reason="helm not installed (make tools)")
@pytest.mark.parametrize("request_log", [True, False])
def test_chart_with_s3_storage_gives_triton_the_bucket_not_the_claim(request_log):
    import subprocess

    import yaml

    sets = ["events.hmacSecret.name=x", "storage.type=s3", "storage.s3.bucket=models",
            "storage.s3.endpoint=http://minio.minio:9000", "storage.s3.credentialsSecret.name=taskloom-s3",
            f"triton.requestLog.enabled={str(request_log).lower()}"]
    args = [a for s in sets for a in ("--set", s)]
    chart = str(REPO_ROOT / "charts" / "taskloom")
    lint = subprocess.run([str(HELM), "lint", "--strict", chart, *args], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run([str(HELM), "template", "t", chart, "--show-only", "templates/triton.yaml", *args],
                         capture_output=True, text=True, check=True).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert "--model-repository=s3://http://minio.minio:9000/models/model_repository" in triton["args"]
    env = {e["name"]: e for e in triton["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "taskloom-s3", "key": "AWS_ACCESS_KEY_ID"}
    mount_dir = env["TRITON_AWS_MOUNT_DIRECTORY"]["value"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["localized"]
    assert {"name": "localized", "mountPath": mount_dir} in triton["volumeMounts"]
    # the claim only for the request log's folder, never the model repository
    assert ("shared" in volumes) == request_log
    assert all(m.get("subPath") for m in triton["volumeMounts"] if m["name"] == "shared")

    missing = subprocess.run([str(HELM), "template", "t", chart, *args[:2], "--set", "storage.type=s3"],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "storage.s3.bucket is required" in missing.stderr
