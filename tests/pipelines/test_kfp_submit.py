"""`taskloom pipeline submit` and `register` against a real HTTP server speaking the KFP v2beta1 API.

The server (tests/cluster/kfp_standin.py, shared with the README walkthrough) checks every request body
against the published kfp_server_api models and keeps what was uploaded, so these tests see the exact
requests: the compiled pipeline uploaded once and reused, runs by pipeline_version_reference, the
multi-user namespace and bearer token, and one clear line (exit 2) for each way the server can refuse.
The chart's Sensor is rendered with the real helm and its request is sent to the same server.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from taskloom import cli
from taskloom.kfp import DIGEST_PREFIX, KFP_API, KfpApi, compile_pipeline, pipeline_parameters, run_body

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    """A module of tests/cluster (the KFP stand-in, the chart helpers), imported once by its path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, TESTS / "cluster" / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


standin = _load("kfp_standin")
KfpStandIn = standin.KfpStandIn


def taskloom(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def paths(kfp) -> list[str]:
    return [f"{c['method']} {c['path'].removeprefix(KFP_API)}" for c in kfp.calls]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, bytes]:
    """The compiled YAML of the pipelines these tests upload, as `taskloom pipeline compile` writes it."""
    out = tmp_path_factory.mktemp("compiled")
    return {n: compile_pipeline(n, out / f"{n}.yaml").read_bytes() for n in ("drift_retrain", "train_merge_deploy")}


def test_single_user_submit_uploads_the_compiled_pipeline_and_runs_that_version(capsys, compiled):
    with KfpStandIn() as kfp:
        code, out, err = taskloom(
            capsys,
            "pipeline",
            "submit",
            "drift_retrain",
            "--host",
            kfp.url,
            "-p",
            "task=rt-sentiment",
            "-p",
            "max_steps=5",
        )
    assert code == 0, err
    assert kfp.errors == []
    result = json.loads(out)
    assert paths(kfp) == [
        "GET /healthz",
        "GET /pipelines",
        "POST /pipelines",
        f"GET /pipelines/{result['pipeline_id']}/versions",
        "POST /pipelines/upload_version",
        "GET /experiments",
        "POST /experiments",
        "POST /runs",
    ]
    assert all("Authorization" not in c["headers"] for c in kfp.calls)  # single-user: no token, no namespace
    assert all("namespace" not in c["query"] for c in kfp.calls)
    # the uploaded file is the compiled pipeline, byte for byte, and the version records its digest
    (version,) = kfp.versions.values()
    assert kfp.packages[version["pipeline_version_id"]] == compiled["drift_retrain"]
    assert version["description"].startswith(DIGEST_PREFIX) and version["display_name"] == result["version"]
    (pipeline,) = kfp.pipelines.values()
    assert pipeline["display_name"] == "drift_retrain" and "namespace" not in pipeline
    # the run: a V2beta1Run (checked by the server) naming that version, the parameters typed as declared
    (body,) = [json.loads(c["body"]) for c in kfp.calls_to("POST", "/runs")]
    run = standin.conform("V2beta1Run", body)
    assert run.pipeline_version_reference.pipeline_id == pipeline["pipeline_id"] == result["pipeline_id"]
    assert (
        run.pipeline_version_reference.pipeline_version_id
        == version["pipeline_version_id"]
        == result["pipeline_version_id"]
    )
    assert run.runtime_config.parameters == {"task": "rt-sentiment", "max_steps": 5}
    assert run.experiment_id == result["experiment_id"] and run.service_account is None
    assert body["display_name"].startswith("drift_retrain-")
    assert kfp.experiments[result["experiment_id"]]["display_name"] == "taskloom"
    assert result["run_id"] == kfp.runs[0]["run_id"] and result["state"] == "SUBMITTED" and result["uploaded"] is True


def test_resubmitting_reuses_the_pipeline_version_and_a_changed_pipeline_gets_a_new_one(capsys):
    with KfpStandIn() as kfp:
        submit = ("pipeline", "submit", "drift_retrain", "--host", kfp.url, "-p", "task=rt-sentiment")
        first = json.loads(taskloom(capsys, *submit)[1])
        kfp.calls.clear()
        code, out, err = taskloom(capsys, *submit)
        assert code == 0, err
        second = json.loads(out)
        assert "POST /pipelines" not in paths(kfp) and "POST /pipelines/upload_version" not in paths(kfp)
        assert "POST /experiments" not in paths(kfp)
        assert second["uploaded"] is False and second["run_id"] != first["run_id"]
        assert [second[k] == first[k] for k in ("pipeline_id", "pipeline_version_id", "experiment_id")] == [True] * 3
        assert len(kfp.pipelines) == len(kfp.versions) == len(kfp.experiments) == 1 and len(kfp.runs) == 2
        refs = [r["pipeline_version_reference"]["pipeline_version_id"] for r in kfp.runs]
        assert refs == [first["pipeline_version_id"]] * 2

        # a named version: uploaded once, then reused
        named = ("pipeline", "register", "drift_retrain", "--host", kfp.url, "--version", "v1")
        v1 = json.loads(taskloom(capsys, *named)[1])
        assert v1["uploaded"] is True and v1["pipeline_id"] == first["pipeline_id"] and len(kfp.versions) == 2
        assert json.loads(taskloom(capsys, *named)[1])["pipeline_version_id"] == v1["pipeline_version_id"]

        # a name already used for other contents (uploaded from another checkout): refused, nothing uploaded
        other = DIGEST_PREFIX + "0" * 64
        kfp.versions[v1["pipeline_version_id"]]["description"] = other
        code, out, err = taskloom(capsys, *named)
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            f"error: pipeline drift_retrain: version 'v1' exists in KFP with other contents "
            f"(its description: '{other}'): give a new --version"
        ]
        assert len(kfp.versions) == 2

        # compiled for another registry the pipeline differs: a new default version (in a fresh process, as
        # the image is fixed when the components are imported)
        env = {**os.environ, "TASKLOOM_IMAGE_REGISTRY": "registry.example.com/ml"}
        done = subprocess.run(
            [sys.executable, "-m", "taskloom.cli", "pipeline", "register", "drift_retrain", "--host", kfp.url],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        moved = json.loads(done.stdout)
        assert moved["uploaded"] is True and moved["pipeline_id"] == first["pipeline_id"] and len(kfp.versions) == 3
        assert moved["version"] != first["version"] and moved["version"].split("-")[0] == first["version"].split("-")[0]
        assert b"image: registry.example.com/ml/taskloom:" in kfp.packages[moved["pipeline_version_id"]]
    assert kfp.errors == []


def test_multi_user_submit_runs_in_the_profile_namespace_with_the_token(capsys, tmp_path, compiled):
    token = tmp_path / "authorization"
    token.write_text("Bearer s3cr3t-token\n")  # the chart's kfp.tokenSecret format
    with KfpStandIn(multi_user=True, token="s3cr3t-token") as kfp:
        code, out, err = taskloom(
            capsys,
            "pipeline",
            "submit",
            "train_merge_deploy",
            "--host",
            kfp.url,
            "--namespace",
            "team-a",
            "--token-file",
            str(token),
            "--experiment",
            "nightly",
            "-p",
            "tasks=rt-sentiment",
        )
        assert code == 0, err
        result = json.loads(out)
        assert result["namespace"] == "team-a"
        assert {c["headers"].get("Authorization") for c in kfp.calls} == {"Bearer s3cr3t-token"}
        assert [
            c["query"]["namespace"]
            for c in kfp.calls
            if c["method"] == "GET" and c["path"].endswith(("/pipelines", "/experiments"))
        ] == ["team-a"] * 2
        (pipeline,) = kfp.pipelines.values()
        (experiment,) = kfp.experiments.values()
        assert pipeline["namespace"] == experiment["namespace"] == "team-a" and experiment["display_name"] == "nightly"
        (run,) = kfp.runs
        assert run["experiment_id"] == experiment["experiment_id"] and run["service_account"] == "default-editor"
        assert kfp.packages[run["pipeline_version_reference"]["pipeline_version_id"]] == compiled["train_merge_deploy"]

        # the bare token works too; another profile gets its own pipeline and experiment
        token.write_text("s3cr3t-token")
        code, out, err = taskloom(
            capsys,
            "pipeline",
            "register",
            "train_merge_deploy",
            "--host",
            kfp.url,
            "--namespace",
            "team-b",
            "--token-file",
            str(token),
            "--output",
            "helm",
        )
        assert code == 0, err
        ids = dict(kv.split("=", 1) for kv in out.strip().split(","))
        (team_b,) = [p for p in kfp.pipelines.values() if p["namespace"] == "team-b"]
        assert ids["kfp.pipelineId"] == team_b["pipeline_id"]
        assert kfp.versions[ids["kfp.pipelineVersionId"]]["pipeline_id"] == team_b["pipeline_id"]
        assert kfp.experiments[ids["kfp.experimentId"]]["namespace"] == "team-b"

        # a multi-user KFP without a namespace, or without the token: one line, nothing created
        before = (len(kfp.pipelines), len(kfp.runs))
        code, out, err = taskloom(
            capsys, "pipeline", "submit", "train_merge_deploy", "--host", kfp.url, "--token-file", str(token)
        )
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            f"error: --host {kfp.url}: this Kubeflow Pipelines is multi-user: give --namespace (your profile namespace)"
        ]
        code, out, err = taskloom(
            capsys, "pipeline", "submit", "train_merge_deploy", "--host", kfp.url, "--namespace", "team-a"
        )
        assert (code, out) == (2, "")
        assert err.splitlines() == [
            f"error: --host {kfp.url}: GET /apis/v2beta1/healthz answered 401 Unauthorized: Failed to "
            "authenticate the request: no valid bearer token: this KFP wants a token: give --token-file "
            "(a file holding the token or 'Bearer <token>')"
        ]
        assert (len(kfp.pipelines), len(kfp.runs)) == before
    assert kfp.errors == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "fail, token, expected",
    [
        (
            {},
            "wrong",
            "GET /apis/v2beta1/healthz answered 401 Unauthorized: Failed to authenticate the request: no valid "
            "bearer token: the token in {token_file} was refused",
        ),
        (
            {"*": 404},
            None,
            "GET /apis/v2beta1/healthz answered 404 Not Found: injected failure 404 for GET "
            "/apis/v2beta1/healthz: is --host the Kubeflow Pipelines 2.x API (the ml-pipeline service, port 8888)?",
        ),
        (
            {"POST /apis/v2beta1/runs": 500},
            None,
            "POST /apis/v2beta1/runs answered 500 Internal Server Error: injected "
            "failure 500 for POST /apis/v2beta1/runs: the Kubeflow Pipelines API failed",
        ),
        (
            {"POST /apis/v2beta1/pipelines/upload_version": 403},
            None,
            "POST /apis/v2beta1/pipelines/upload_version answered "
            "403 Forbidden: injected failure 403 for POST /apis/v2beta1/pipelines/upload_version: the token's identity may "
            "not do this (in multi-user KFP: a namespace it is not a contributor of?)",
        ),
    ],
)
def test_server_errors_are_one_line_and_exit_2(capsys, tmp_path, fail, token, expected):
    token_file = tmp_path / "token"
    token_file.write_text(token or "")
    with KfpStandIn(token="right" if token else None) as kfp:
        kfp.fail.update(fail)
        args = ["pipeline", "submit", "drift_retrain", "--host", kfp.url, "-p", "task=rt-sentiment"]
        code, out, err = taskloom(capsys, *args, *(["--token-file", str(token_file)] if token else []))
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"error: --host {kfp.url}: " + expected.format(token_file=token_file)]
    assert kfp.runs == [] and kfp.errors == []


def test_unreachable_host_bad_token_file_and_bad_output_are_one_line(capsys, tmp_path):
    port = _closed_port()
    code, out, err = taskloom(capsys, "pipeline", "register", "drift_retrain", "--host", f"http://127.0.0.1:{port}")
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"error: --host http://127.0.0.1:{port}: cannot reach the Kubeflow Pipelines API "
        "(ConnectionRefusedError: [Errno 111] Connection refused)"
    ]
    (tmp_path / "two").write_text("Bearer a b\n")
    for token, message in [
        (tmp_path / "none", f"{tmp_path / 'none'}: no such KFP token file"),
        (tmp_path / "two", f"--token-file {tmp_path / 'two'}: expected one token, or 'Bearer <token>', on one line"),
    ]:
        code, out, err = taskloom(
            capsys,
            "pipeline",
            "register",
            "drift_retrain",
            "--host",
            f"http://127.0.0.1:{port}",
            "--token-file",
            str(token),
        )
        assert (code, out, err.splitlines()) == (2, "", [f"error: {message}"])
    code, _, err = taskloom(capsys, "pipeline", "register", "drift_retrain", "--host", "http://x", "--output", "yaml")
    assert (code, err.splitlines()) == (2, ["error: --output 'yaml': use json or helm"])
    code, _, err = taskloom(capsys, "pipeline", "submit", "drift_retrain", "--host", "http://x", "-p", "nope=1")
    assert code == 2 and "unknown parameter 'nope'" in err


def test_the_sensor_posts_a_v2beta1_run_of_the_registered_pipeline(capsys):
    """The chart rendered with the ids `register --output helm` prints: the Sensor's HTTP trigger body is a
    V2beta1Run (strictly), the shape `submit` sends, and the same server accepts it as a run of drift_retrain."""
    chart = _load("test_kfp_chart")
    with KfpStandIn() as kfp:
        code, sets, err = taskloom(
            capsys, "pipeline", "register", "drift_retrain", "--host", kfp.url, "--output", "helm"
        )
        assert code == 0, err
        kfp_ids = dict(
            zip(
                ("pipeline_id", "pipeline_version_id", "experiment_id"),
                (kv.split("=", 1)[1] for kv in sets.strip().split(",")),
            )
        )
        docs = chart.render(*sets.strip().split(","), f"kfp.host={kfp.url}/", "kfp.tokenSecret.name=")
        (sensor,) = chart.by_kind(docs, "Sensor")
        event = {"body": {"task": "rt-sentiment", "adapter_id": "rt-v7"}}
        url, body = chart.sensor_request(sensor, event)
        assert url == f"{kfp.url}{KFP_API}/runs"
        assert "secureHeaders" not in sensor["spec"]["triggers"][0]["template"]["http"]  # no token Secret set
        run = standin.conform("V2beta1Run", body)
        ids = {
            "pipeline_id": run.pipeline_version_reference.pipeline_id,
            "experiment_id": run.experiment_id,
            "pipeline_version_id": run.pipeline_version_reference.pipeline_version_id,
        }
        assert ids == {k: kfp_ids[k] for k in ids}
        assert body == KfpApi.body(run_body("drift-retrain rt-sentiment", ids, event["body"]))  # what submit sends
        assert set(body["runtime_config"]["parameters"]) <= set(pipeline_parameters("drift_retrain"))
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    (accepted,) = kfp.runs
    (version,) = kfp.versions.values()
    assert accepted["pipeline_version_reference"] == {
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    assert kfp.errors == []


def test_the_stand_in_refuses_what_the_published_api_does_not_define(capsys):
    """The checks above mean something: bodies off the kfp_server_api models, or runs the server would
    refuse, get a 400 and are recorded."""
    with KfpStandIn() as kfp:
        ids = json.loads(taskloom(capsys, "pipeline", "register", "drift_retrain", "--host", kfp.url)[1])
        good = KfpApi.body(run_body("r", ids, {"task": "rt-sentiment"}))
        bad = [
            {
                **good,
                "pipeline_version_reference": {**good["pipeline_version_reference"], "version": "v1"},
            },  # unknown field
            {**good, "runtime_config": {"params": {"task": "x"}}},  # a misspelt field one level down
            {**good, "state": "RUNNING"},  # set by the server only
            {**good, "storage_state": "SOMEWHERE"},  # not an enum value
            {**good, "display_name": 7},  # wrong type
            {**good, "runtime_config": {"parameters": {"tasks": "x"}}},  # not drift_retrain's parameter
            {**good, "runtime_config": {"parameters": {"max_steps": "20"}}},  # an integer parameter given as a string
        ]
        for body in [*bad, good]:
            request = urllib.request.Request(
                f"{kfp.url}{KFP_API}/runs",
                data=json.dumps(body).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                status = urllib.request.urlopen(request, timeout=10).status
            except urllib.error.HTTPError as e:
                status = e.code
            assert status == (200 if body is good else 400), body
    assert len(kfp.errors) == len(bad) and len(kfp.runs) == 1
