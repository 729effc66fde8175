"""Compiled pipelines: golden YAML, a strict proto parse, and where the steps run in a cluster.

When a golden test fails after an intended change, regenerate with `make golden` and review the diff.
"""

from __future__ import annotations

import difflib
import re
import socket
import time
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from taskloom import cli
from taskloom.errors import UserError
from taskloom.kfp import (
    coerce_params,
    compile_pipeline,
    load_pipeline,
    pipeline_names,
    pipeline_parameters,
    run_local,
    submit,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "pipelines" / "compiled"
# where each pipeline's steps run: the GPU steps, and the steps that mount the shared volume
GPU_EXECUTORS = {"train_joint": ("exec-train-joint-adapter",), "generate_deploy": ("exec-train-adapter",)}
SHARED_VOLUME_EXECUTORS = {
    "train_joint": ("exec-profile-task", "exec-train-joint-adapter"),
    "generate_deploy": ("exec-profile-task", "exec-generate-adapter", "exec-train-adapter", "exec-deploy-adapter",
                        "exec-deploy-adapter-2"),
}
RELEASE_GPU = ("exec-train-adapter", "exec-gate-model", "exec-deploy-model")  # train, merge, gate, deploy
RELEASE_SHARED = ("exec-profile-task", "exec-train-adapter", "exec-deploy-model")


def normalise(text: str) -> str:
    """Drop what changes without the pipeline changing: the SDK version (and any timestamp)."""
    text = re.sub(r"(?m)^sdkVersion: .*$", "sdkVersion: <sdk>", text)
    return re.sub(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?Z?", "<time>", text)


@pytest.fixture(scope="module", params=pipeline_names())
def compiled(request, tmp_path_factory):
    name = request.param
    out = compile_pipeline(name, tmp_path_factory.mktemp("compiled") / f"{name}.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    return name, out.read_text(), docs


def test_compiled_pipeline_matches_golden(compiled):
    name, text, _ = compiled
    golden = GOLDEN / f"{name}.yaml"
    assert golden.exists(), f"{golden} is missing: run `make golden`"
    diff = list(difflib.unified_diff(normalise(golden.read_text()).splitlines(), normalise(text).splitlines(),
                                     "golden", "compiled now", lineterm="", n=1))
    assert not diff, (
        f"pipelines/compiled/{name}.yaml is out of date with pipelines/{name}.py: run `make golden` and review"
        " the diff:\n" + "\n".join(diff[:40])
    )


def test_compiled_pipeline_parses_strictly_into_the_protos(compiled):
    name, _, docs = compiled
    assert len(docs) == 2, "expected the pipeline spec and the kubernetes platform spec"
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())  # unknown fields raise
    assert spec.pipeline_info.name == name.replace("_", "-")
    platform = json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    executors = platform.platforms["kubernetes"].deployment_spec.executors
    assert set(GPU_EXECUTORS.get(name, RELEASE_GPU)) | set(SHARED_VOLUME_EXECUTORS.get(name, RELEASE_SHARED)) <= set(executors)
    for struct in executors.values():  # each executor's settings are a valid KubernetesExecutorConfig
        json_format.ParseDict(json_format.MessageToDict(struct), k8s_pb2.KubernetesExecutorConfig())


def test_gpu_steps_ask_for_a_gpu_on_gpu_operator_nodes(compiled):
    name, _, docs = compiled
    gpu, shared = GPU_EXECUTORS.get(name, RELEASE_GPU), SHARED_VOLUME_EXECUTORS.get(name, RELEASE_SHARED)
    executors = docs[0]["deploymentSpec"]["executors"]
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for key in gpu:
        accel = executors[key]["container"]["resources"]["accelerator"]
        assert accel["resourceType"] == "nvidia.com/gpu" and accel["resourceCount"] == "1"
        assert platform[key]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in platform[key]["tolerations"]
    for key, executor in executors.items():
        if key not in gpu:
            assert "accelerator" not in executor["container"].get("resources", {}), f"{key} should not hold a GPU"
            assert "nodeSelector" not in platform.get(key, {})
    for key in shared:
        mounts = platform[key]["pvcMount"]
        assert [(m["constant"], m["mountPath"]) for m in mounts] == [("taskloom-shared", "/mnt/taskloom")]


def test_every_step_is_offline_in_the_one_image_and_installs_nothing(compiled):
    _, _, docs = compiled
    for key, executor in docs[0]["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == "ghcr.io/taskloom/taskloom:0.1.0", key
        assert "pip install" not in " ".join(container["command"]), key
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"], key


def test_deploy_runs_only_when_the_gate_promotes(compiled):
    name, _, docs = compiled
    if name == "train_joint":  # trains one adapter; nothing is gated or deployed
        assert not any("deploy" in key or "gate" in key for key in docs[0]["deploymentSpec"]["executors"])
        return
    root = docs[0]["root"]["dag"]["tasks"]
    if name == "generate_deploy":  # the generated adapter ships when it beats the base, else a trained one
        branches = docs[0]["components"][root["condition-branches-1"]["componentRef"]["name"]]["dag"]["tasks"]
        generated, fallback = (branches[k] for k in sorted(branches))
        assert generated["triggerPolicy"]["condition"] == (
            "inputs.parameter_values['pipelinechannel--generate-adapter-Output'] == true")
        assert fallback["triggerPolicy"]["condition"] == (
            "!(inputs.parameter_values['pipelinechannel--generate-adapter-Output'] == true)")
        inner = [list(docs[0]["components"][b["componentRef"]["name"]]["dag"]["tasks"]) for b in (generated, fallback)]
        assert inner == [["deploy-adapter"], ["deploy-adapter-2", "train-adapter"]]
        return
    condition = next(t for t in root.values() if t["componentRef"]["name"].startswith("comp-condition"))
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--gate-model-Output'] == true"
    inner = docs[0]["components"][condition["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deploy-model"]


def test_pipeline_parameters_and_their_types():
    params = pipeline_parameters("train_merge_deploy")
    assert params["tasks"] == ("String", "rt-sentiment,chatterbot-qa")
    assert params["merge_method"] == ("String", "task_arithmetic")
    assert params["max_steps"][0] == "Integer" and params["share"] == ("Float", 0.9)
    retrain = pipeline_parameters("drift_retrain")
    assert {"task", "adapter_id"} <= set(retrain)  # what the Argo Events Sensor passes
    assert coerce_params("train_merge_deploy", {"max_steps": "5", "share": "0.8", "tasks": "a,b"}) == {
        "max_steps": 5, "share": 0.8, "tasks": "a,b"}


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("train_and_pray", {}, "unknown pipeline 'train_and_pray': use one of [drift_retrain, generate_deploy, train_joint, train_merge_deploy]"),
        ("train_merge_deploy", {"max_step": "5"}, "unknown parameter 'max_step'"),
        ("train_merge_deploy", {"max_steps": "five"}, "parameter max_steps: expected an integer, got 'five'"),
        ("train_merge_deploy", {"share": "most"}, "parameter share: expected a number, got 'most'"),
    ],
)
def test_bad_pipeline_or_parameter_is_one_clear_line(name, params, message, tmp_path):
    with pytest.raises(UserError) as e:
        run_local(name, params, tmp_path / "root")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "root").exists()  # nothing written before the parameters are right


def test_cli_compile_writes_the_golden_and_bad_names_exit_2(tmp_path, capsys):
    out = tmp_path / "drift_retrain.yaml"
    assert cli.main(["pipeline", "compile", "drift_retrain", "--out", str(out)]) == 0
    assert normalise(out.read_text()) == normalise((GOLDEN / "drift_retrain.yaml").read_text())
    capsys.readouterr()
    assert cli.main(["pipeline", "compile", "nope", "--out", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown pipeline 'nope': use one of [drift_retrain, generate_deploy, train_joint, train_merge_deploy]"]
    assert cli.main(["pipeline", "run", "drift_retrain", "-p", "max_steps"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "nope.yaml").exists()


def test_submit_to_an_unreachable_host_is_a_clear_error():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"--host http://127.0.0.1:{port}: cannot reach the Kubeflow Pipelines API"):
        submit("drift_retrain", f"http://127.0.0.1:{port}", {"task": "rt-sentiment"}, "taskloom")
    assert time.monotonic() - start < 30  # fails fast rather than hanging
    with pytest.raises(UserError, match="expected a URL"):
        submit("drift_retrain", "ml-pipeline:8888", {}, "taskloom")


def test_registry_names_real_pipeline_functions():
    for name in pipeline_names():
        fn = load_pipeline(name)
        assert fn.component_spec.name == name.replace("_", "-")


def test_deploy_step_reads_the_triton_admin_key_from_its_secret(compiled):
    """Triton's model control answers only with the admin key (chart: triton.adminKey): the deploy step
    gets it from the chart's Secret as TASKLOOM_TRITON_ADMIN_KEY; no other step sees it."""
    name, _, docs = compiled
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_key = {k for k, v in platform.items() if v.get("secretAsEnv")}
    if name == "train_joint":
        assert not with_key
        return
    if name == "generate_deploy":
        assert with_key == {"exec-deploy-adapter", "exec-deploy-adapter-2"}
        return
    assert with_key == {"exec-deploy-model"}
    (secret,) = platform["exec-deploy-model"]["secretAsEnv"]
    assert secret["secretNameParameter"]["runtimeValue"]["constant"] == "taskloom-triton-admin"
    assert secret["keyToEnv"] == [{"secretKey": "key", "envVar": "TASKLOOM_TRITON_ADMIN_KEY"}]


# What each step shows in the KFP UI besides its Metrics: output name → artifact type.
UI_OUTPUTS = {
    "comp-validate-task": {"page": "system.HTML"},
    "comp-train-adapter": {"page": "system.HTML", "classification": "system.ClassificationMetrics"},
    "comp-train-joint-adapter": {"page": "system.HTML"},
    "comp-merge-adapters": {"page": "system.HTML"},
}


@pytest.mark.parametrize("name", pipeline_names())
def test_golden_declares_the_report_pages_and_classification_metrics(name):
    spec = next(yaml.safe_load_all((GOLDEN / f"{name}.yaml").read_text()))
    present = [c for c in UI_OUTPUTS if c in spec["components"]]
    assert "comp-validate-task" in present and any(c.startswith("comp-train") for c in present)
    for comp in present:
        declared = spec["components"][comp]["outputDefinitions"]["artifacts"]
        for output, kind in UI_OUTPUTS[comp].items():
            assert declared[output]["artifactType"]["schemaTitle"] == kind, f"{name}: {comp}.{output}"
