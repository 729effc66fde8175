"""Multi-GPU / multi-node training handed to the Kubeflow Trainer, checked without a cluster.

No Kubernetes API server or Trainer controller can run on this machine, so:
- the TrainJob taskloom builds is validated against the TrainJob CRD's own openAPIV3Schema (vendored,
  trimmed, from kubeflow/trainer into manifests/crds/), made strict as the API server's
  fieldValidation=Strict is (no unknown field anywhere), plus the CRD's CEL rules on the name;
- the chart's TrainingRuntime is validated against the runtime CRD's schema, and its Job template
  strictly against the Kubernetes batch/v1 schema (kubernetes-validate);
- `submit_and_wait` runs against a small in-test stand-in for CustomObjectsApi (FakeTrainJobs) that
  keeps the objects created, re-checks each against the schema, and walks each job through the states
  the Trainer reports; the real kubernetes client's ApiException carries its errors;
- the hand-off in `train_step` runs the exact command line the TrainJob carries (torchrun, two
  data-parallel processes with the PET_* settings the Trainer's torch plugin gives a node) for real.
"""

from __future__ import annotations

import copy
import json
import os
import re
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from taskloom.errors import UserError
from taskloom.specs import TrainRunSpec
from taskloom.steps import train_step
from taskloom.train import trainjob as tj

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "manifests" / "crds"
K8S_VERSION = "1.33"
T0 = "2026-01-01T00:00:00Z"


@cache
def crd_schema(kind: str) -> dict:
    """The vendored openAPIV3Schema, made strict: an object that lists its properties allows no others."""

    def strict(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)
        return node

    return strict(yaml.safe_load((CRDS / f"trainer.kubeflow.org_{kind}.schema.yaml").read_text()))


def cel_name_errors(schema: dict, obj: dict) -> list[str]:
    """The CRD's two CEL rules on metadata.name (the API server evaluates them; jsonschema cannot)."""
    rules = [v["rule"] for v in schema["x-kubernetes-validations"]]
    (pattern,) = [re.fullmatch(r"self\.metadata\.name\.matches\('(.*)'\)", r).group(1) for r in rules if ".matches(" in r]
    (limit,) = [int(re.fullmatch(r"size\(self\.metadata\.name\) <= (\d+)", r).group(1)) for r in rules if "size(" in r]
    name = obj["metadata"]["name"]
    return [m for ok, m in ((re.match(pattern, name), "name is not an RFC 1035 label"),
                            (len(name) <= limit, f"name longer than {limit}")) if not ok]


def schema_errors(obj: dict, kind: str = "trainjobs") -> list[str]:
    schema = crd_schema(kind)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
    return errors + (cel_name_errors(schema, obj) if kind == "trainjobs" else [])


def condition(kind: str, reason: str, message: str) -> dict:
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": T0}


def jobs(active=0, ready=0, succeeded=0, failed=0) -> list[dict]:
    return [{"name": "node", "active": active, "ready": ready, "succeeded": succeeded, "failed": failed, "suspended": 0}]


CREATED = None  # just created: the controller has not written a status yet
PENDING = {"jobsStatus": jobs()}
RUNNING = {"jobsStatus": jobs(active=1, ready=1)}
COMPLETE = {"conditions": [condition("Complete", "JobsCompleted", "All jobs completed")], "jobsStatus": jobs(succeeded=1)}
FAILED = {"conditions": [condition("Failed", "TrainingRuntimeNotSupported",
                                   "runtime taskloom-torch-distributed:\nnot found")], "jobsStatus": jobs(failed=1)}


class FakeTrainJobs:
    """Stands in for the API server and the Trainer controller (CustomObjectsApi's three calls).

    Every created TrainJob is checked against the strict CRD schema; each read of a job returns the next of
    `stages` (a status dict, None for no status yet, an exception to raise, or a callable that gets the
    stored object and returns one of those, e.g. after running the workload)."""

    def __init__(self, stages, create_error: ApiException | None = None):
        self.stages, self.create_error = list(stages), create_error
        self.jobs: dict[tuple[str, str], dict] = {}
        self.calls: list[tuple] = []

    def _check(self, group, version, plural):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        self._check(group, version, plural)
        self.calls.append(("create", namespace, body["metadata"]["name"], kw))
        if self.create_error is not None:
            raise self.create_error
        assert schema_errors(body) == []
        key = (namespace, body["metadata"]["name"])
        if key in self.jobs:
            raise ApiException(status=409, reason="Conflict")
        self.jobs[key] = {"object": copy.deepcopy(body), "reads": 0}
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.calls.append(("get", namespace, name))
        job = self.jobs.get((namespace, name))
        if job is None:
            raise ApiException(status=404, reason="Not Found")
        stage = self.stages[min(job["reads"], len(self.stages) - 1)]
        job["reads"] += 1
        if callable(stage):
            stage = stage(job["object"])
        if isinstance(stage, Exception):
            raise stage
        obj = copy.deepcopy(job["object"])
        if stage is not None:
            obj["status"] = copy.deepcopy(stage)
        assert schema_errors(obj) == []  # statuses are shaped as the CRD declares them
        return obj

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self._check(group, version, plural)
        self.calls.append(("delete", namespace, name, kw))
        del self.jobs[(namespace, name)]


class Clock:
    """Time that moves only when the code under test sleeps."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def manifest(nodes=2, gpus=4, name="tl-rt-sentiment-0a1b2c3d", **kw) -> dict:
    return tj.trainjob_manifest(name, "/mnt/taskloom/trainjobs/x/task/task.yaml", "/mnt/taskloom/trainjobs/x/out",
                                nodes=nodes, gpus_per_node=gpus, train_args=["--max-steps", "5", "--device", "cuda"],
                                task="rt-sentiment", run_id="8c6f2a8e-3f5d-4a55-9d2b-0c1e6b7a9f10", **kw)


# -- the manifest -----------------------------------------------------------------------------------

@pytest.mark.parametrize("nodes, gpus, procs, gpu_limit", [(2, 4, 4, 4), (1, 8, 8, 8), (3, 0, 1, None)])
def test_manifest_validates_against_the_trainjob_crd(nodes, gpus, procs, gpu_limit):
    m = manifest(nodes, gpus)
    assert schema_errors(m) == []
    assert (m["apiVersion"], m["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert m["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                       "name": "taskloom-torch-distributed"}
    trainer = m["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (nodes, procs)
    assert trainer["resourcesPerNode"]["limits"].get("nvidia.com/gpu") == gpu_limit
    assert trainer["resourcesPerNode"]["requests"] == {"cpu": str(4 * procs), "memory": f"{16 * procs}Gi"}
    labels, notes = m["metadata"]["labels"], m["metadata"]["annotations"]
    assert labels["taskloom.io/task"] == "rt-sentiment"
    assert labels["taskloom.io/kfp-run-id"] == notes["taskloom.io/kfp-run-id"] == "8c6f2a8e-3f5d-4a55-9d2b-0c1e6b7a9f10"
    assert notes["taskloom.io/output"] == "/mnt/taskloom/trainjobs/x/out"
    # no PET_* variables: the Trainer refuses them (it sets them itself for torchrun)
    assert not any(e["name"].startswith("PET_") for e in trainer.get("env", []))


def test_the_command_is_torchrun_running_the_real_train_verb():
    import typer
    from torch.distributed.run import get_args_parser

    from taskloom.cli import app

    trainer = manifest()["spec"]["trainer"]
    assert trainer["command"] == ["torchrun"]
    args = get_args_parser().parse_args(trainer["args"])
    assert args.module and args.training_script == "taskloom.cli"
    verb, *rest = args.training_script_args
    assert verb == "train"
    ctx = typer.main.get_command(app).commands[verb].make_context(verb, list(rest), resilient_parsing=False)
    assert str(ctx.params["out"]) == "/mnt/taskloom/trainjobs/x/out"
    assert ctx.params["max_steps"] == 5 and ctx.params["device"] == "cuda"
    assert "/mnt/taskloom/trainjobs/x/task/task.yaml" in json.dumps(ctx.params, default=str)


def test_the_strict_schema_catches_mistakes():
    m = manifest()
    m["spec"]["trainer"]["numProcsPerNode"] = m["spec"]["trainer"].pop("numProcPerNode")  # a typo
    m["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] = "four"
    del m["spec"]["runtimeRef"]
    m["metadata"]["name"] = "Train_Job"
    errors = "\n".join(schema_errors(m))
    assert "'numProcsPerNode' was unexpected" in errors
    assert "'runtimeRef' is a required property" in errors
    assert "'four'" in errors and "name is not an RFC 1035 label" in errors


@pytest.mark.parametrize("task", ["rt-sentiment", "Chatterbot QA (v2) / with a very long name indeed", "---"])
def test_job_names_are_short_rfc1035_labels_and_never_repeat(task):
    names = {tj.trainjob_name(task) for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert cel_name_errors(crd_schema("trainjobs"), {"metadata": {"name": name}}) == []
        assert len(f"{name}-node-0-0") <= 63  # the JobSet's pod host names stay valid labels


def test_label_values_are_made_valid():
    m = tj.trainjob_manifest("tl-x-00000000", "/t", "/o", task="Chatterbot QA (v2)!", run_id="run/42 #7")
    labels = m["metadata"]["labels"]
    assert labels["taskloom.io/task"] == "Chatterbot-QA-v2" and labels["taskloom.io/kfp-run-id"] == "run-42-7"
    assert m["metadata"]["annotations"]["taskloom.io/kfp-run-id"] == "run/42 #7"  # the exact id stays readable


# -- the chart's runtime ---------------------------------------------------------------------------

def _render(*sets: str) -> list[dict]:
    from test_kfp_chart import render  # the real helm from `make tools`, as the chart tests run it

    return render(*sets)


@pytest.fixture(scope="module")
def runtime() -> dict:
    (obj,) = [d for d in _render() if d["kind"] == "TrainingRuntime"]
    return obj


def test_chart_runtime_validates_and_is_the_one_the_trainjob_names(runtime):
    assert schema_errors(runtime, "clustertrainingruntimes") == []
    assert runtime["metadata"]["name"] == manifest()["spec"]["runtimeRef"]["name"]
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1, "torch": {}}
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"  # the Trainer's torch plugin looks for this job and container name
    assert rjob["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "node"}, "spec": rjob["template"]["spec"]}
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)  # raises on unknown or mistyped fields


def test_chart_runtime_runs_the_taskloom_image_on_gpu_nodes_with_the_shared_volume(runtime):
    from taskloom_components import IMAGE
    from taskloom_pipelines.placement import GPU_NODE_LABEL, GPU_TAINT_KEY, SHARED_MOUNT, SHARED_PVC

    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "node" and container["image"] == IMAGE
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert pod["nodeSelector"] == dict([GPU_NODE_LABEL])
    assert {"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == SHARED_PVC
    assert mounts == {"shared": SHARED_MOUNT, "dshm": "/dev/shm"}
    assert tj.SHARED_DIR == SHARED_MOUNT  # where the KFP step copies the task is where the job reads it
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TASKLOOM_CACHE"] == f"{SHARED_MOUNT}/cache"
    assert not any(k.startswith("PET_") for k in env)
    assert "resources" not in container  # the TrainJob's resourcesPerNode sets them per run


def test_chart_runtime_follows_its_values_and_can_be_switched_off():
    docs = _render("trainer.runtimeName=tl-torch", "trainer.shmSize=2Gi", "image.tag=0.2.0")
    (runtime,) = [d for d in docs if d["kind"] == "TrainingRuntime"]
    assert runtime["metadata"]["name"] == "tl-torch"
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"].endswith(":0.2.0")
    assert next(v for v in pod["volumes"] if v["name"] == "dshm")["emptyDir"]["sizeLimit"] == "2Gi"
    off = {(d["kind"], d["metadata"]["name"]) for d in _render("trainer.enabled=false")}
    assert not any(k == "TrainingRuntime" or n.endswith("-trainjobs") for k, n in off)


@pytest.mark.parametrize("bad, field", [("trainer.runtimeName=Torch_Runtime", "runtimeName"),
                                        ("trainer.shmSize=lots", "shmSize"), ("trainer.gpus=2", "gpus")])
def test_values_schema_rejects_bad_trainer_values(bad, field):
    from test_kfp_chart import CHART, helm

    result = helm("lint", "--strict", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0, f"helm lint accepted {bad}"
    assert field in result.stdout + result.stderr


# -- submit_and_wait --------------------------------------------------------------------------------

def wait(api, m=None, timeout_s=3600.0, poll_s=15.0):
    clock = Clock()
    result = tj.submit_and_wait(m or manifest(), "kubeflow", api=api, timeout_s=timeout_s, poll_s=poll_s,
                                sleep=clock.sleep, clock=clock)
    return result, clock


def test_created_running_complete():
    api = FakeTrainJobs([CREATED, PENDING, RUNNING, RUNNING, COMPLETE])
    result, clock = wait(api)
    assert result["state"] == "Complete" and result["name"] == "tl-rt-sentiment-0a1b2c3d"
    assert result["namespace"] == "kubeflow" and result["seconds"] == 60.0
    assert result["status"]["conditions"][0]["reason"] == "JobsCompleted"
    assert clock.sleeps == [15.0] * 4
    assert [c[0] for c in api.calls] == ["create", "get", "get", "get", "get", "get"]
    assert api.calls[0][3] == {"field_validation": "Strict"}  # unknown fields refused, not dropped
    assert ("kubeflow", "tl-rt-sentiment-0a1b2c3d") in api.jobs  # a finished job stays for its logs


def test_failed_is_one_clear_line_with_the_reason():
    api = FakeTrainJobs([CREATED, RUNNING, FAILED])
    with pytest.raises(tj.TrainJobError) as e:
        wait(api)
    assert str(e.value) == ("TrainJob kubeflow/tl-rt-sentiment-0a1b2c3d failed: TrainingRuntimeNotSupported: "
                            "runtime taskloom-torch-distributed: not found")
    assert isinstance(e.value, UserError)
    assert not any(c[0] == "delete" for c in api.calls)


def test_timeout_deletes_the_job():
    api = FakeTrainJobs([CREATED, PENDING, RUNNING])  # runs for ever
    with pytest.raises(tj.TrainJobError) as e:
        wait(api, timeout_s=100.0, poll_s=30.0)
    assert str(e.value) == ("TrainJob kubeflow/tl-rt-sentiment-0a1b2c3d: not finished after 100 s "
                            "(last state: Running); deleted it")
    assert api.calls[-1] == ("delete", "kubeflow", "tl-rt-sentiment-0a1b2c3d", {"propagation_policy": "Foreground"})
    assert api.jobs == {}
    assert [c[0] for c in api.calls].count("get") == 5  # reads at 0, 30, 60, 90, 120 s


def test_passing_api_errors_are_retried_and_a_vanished_job_is_reported():
    api = FakeTrainJobs([RUNNING, ApiException(status=503, reason="Service Unavailable"), OSError("reset"), COMPLETE])
    result, _ = wait(api)
    assert result["state"] == "Complete"

    def vanish(obj):
        api.jobs.clear()
        return ApiException(status=404, reason="Not Found")

    api = FakeTrainJobs([RUNNING, vanish])
    with pytest.raises(tj.TrainJobError, match=r"deleted before it finished \(last state: Running\)$"):
        wait(api)
    api = FakeTrainJobs([ApiException(status=403, reason="Forbidden")])
    with pytest.raises(tj.TrainJobError, match="cannot read its status: 403 Forbidden"):
        wait(api)


@pytest.mark.parametrize(
    "status, body, message",
    [
        (404, "", "not created: 404 Not Found (is the Kubeflow Trainer installed? no trainjobs.trainer.kubeflow.org here)"),
        (403, json.dumps({"message": 'trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:'
                                     'kubeflow:pipeline-runner" cannot create resource "trainjobs"'}),
         'not created: trainjobs.trainer.kubeflow.org is forbidden: User "system:serviceaccount:kubeflow:pipeline-runner"'
         ' cannot create resource "trainjobs" (the pipeline\'s service account needs create/get/delete on trainjobs:'
         " the chart's RBAC)"),
        (422, json.dumps({"message": "TrainJob.trainer.kubeflow.org \"x\" is invalid:\n spec.trainer.numNodes: Invalid"}),
         'not created: TrainJob.trainer.kubeflow.org "x" is invalid: spec.trainer.numNodes: Invalid'),
    ],
)
def test_refused_create_is_one_clear_line(status, body, message):
    err = ApiException(status=status, reason={404: "Not Found", 403: "Forbidden", 422: "Unprocessable Entity"}[status])
    err.body = body
    api = FakeTrainJobs([COMPLETE], create_error=err)
    with pytest.raises(tj.TrainJobError) as e:
        wait(api)
    assert str(e.value) == f"TrainJob kubeflow/tl-rt-sentiment-0a1b2c3d: {message}"
    assert [c[0] for c in api.calls] == ["create"]


# -- the hand-off decision and train_step ---------------------------------------------------------

@pytest.mark.parametrize(
    "nodes, gpus, cluster, expected",
    [
        (1, 0, True, False), (1, 1, True, False),      # one worker: this process, as always
        (1, 2, True, True), (2, 1, True, True), (2, 0, True, True), (4, 8, True, True),
        (1, 2, False, False),                          # several GPUs here: in-process, on one device
        (2, 1, False, "several nodes need a Kubernetes cluster"),
        (0, 1, True, "nodes: expected a whole number >= 1, got 0"),
        (1, -1, True, "gpus_per_node: expected a whole number >= 0, got -1"),
    ],
)
def test_use_trainer(nodes, gpus, cluster, expected):
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"} if cluster else {}
    if isinstance(expected, str):
        with pytest.raises(UserError, match=re.escape(expected)):
            tj.use_trainer(nodes, gpus, env)
    else:
        assert tj.use_trainer(nodes, gpus, env) is expected


def test_pipelines_train_on_a_gpu_and_hand_bigger_runs_to_the_trainer():
    from taskloom.kfp import pipeline_parameters

    for name in ("train_merge_deploy", "drift_retrain"):
        spec, platform = yaml.safe_load_all((REPO / "pipelines" / "compiled" / f"{name}.yaml").read_text())
        resources = spec["deploymentSpec"]["executors"]["exec-train-adapter"]["container"]["resources"]
        accel = resources["accelerator"]
        assert (accel["resourceType"], accel["resourceCount"]) == ("nvidia.com/gpu", "1")
        selector = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-adapter"]["nodeSelector"]
        assert selector["labels"] == {"nvidia.com/gpu.present": "true"}
        (task,) = [t for c in spec["components"].values() for t in c.get("dag", {}).get("tasks", {}).values()
                   if t["componentRef"]["name"] == "comp-train-adapter"]
        params = task["inputs"]["parameters"]
        assert params["nodes"] == {"componentInputParameter": "pipelinechannel--nodes"}
        assert params["gpus_per_node"] == {"componentInputParameter": "pipelinechannel--gpus_per_node"}
        assert params["run_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}
        defaults = pipeline_parameters(name)
        assert defaults["nodes"] == ("Integer", 1) and defaults["gpus_per_node"] == ("Integer", 1)
        # the defaults train in the step's own pod, on its one GPU, even in a cluster
        assert tj.use_trainer(1, 1, {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}) is False


def tiny_task(folder: Path) -> Path:
    """A 40/20-row classification task from the built-in Rotten Tomatoes rows (a staged task folder)."""
    from taskloom.tasks.catalog import build_task

    spec, train, eval_ = build_task("rt-sentiment")
    pick = lambda rows, n: [r for r in rows if r["label"] == "fresh"][: n // 2] + [r for r in rows if r["label"] == "rotten"][: n // 2]  # noqa: E731
    folder.mkdir(parents=True)
    for name, rows in (("train", pick(train, 40)), ("eval", pick(eval_, 20))):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = {**spec, "name": "tiny-sentiment", "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}
    (folder / "task.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_node(obj: dict):
    """What the Trainer does with the TrainJob on one node: its command, with the torch plugin's PET_* settings
    (here every worker on this machine), on CPU. Returns the status the controller would then report."""
    trainer = obj["spec"]["trainer"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PET_NNODES": "1", "PET_NODE_RANK": "0",
           "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]), "PET_MASTER_ADDR": "127.0.0.1",
           "PET_MASTER_PORT": str(free_port())}
    command = [str(Path(sys.executable).with_name(trainer["command"][0])), *trainer["args"]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        return {"conditions": [condition("Failed", "JobFailed", done.stderr[-2000:] or "no output")], "jobsStatus": jobs(failed=1)}
    return COMPLETE


def test_train_step_hands_two_workers_to_the_trainer_and_reads_the_run_back(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    task_dir, shared, out = tiny_task(tmp_path / "staged"), tmp_path / "shared", tmp_path / "kfp" / "model"
    shared.mkdir()
    before = {p.name: p.read_bytes() for p in task_dir.iterdir()}
    api = FakeTrainJobs([CREATED, RUNNING, run_node])
    clock = Clock()
    metrics = train_step(task_dir, out, TrainRunSpec(max_steps=2, device="cpu", seed=1, nodes=1, gpus_per_node=2,
                                                   run_id="run-1234"), trainjob={"api": api, "namespace": "team-a", "shared_dir": shared,
                                                      "poll_s": 5.0, "sleep": clock.sleep, "clock": clock})
    ((namespace, name),) = api.jobs
    job = api.jobs[(namespace, name)]["object"]
    assert namespace == "team-a" and name.startswith("tl-tiny-sentiment-")
    assert job["spec"]["trainer"]["numProcPerNode"] == 2
    assert job["spec"]["trainer"]["args"][-4:] == ["--seed", "1", "--device", "cpu"]
    assert "--max-steps" in job["spec"]["trainer"]["args"]
    assert job["metadata"]["labels"]["taskloom.io/kfp-run-id"] == "run-1234"
    work = shared / "trainjobs" / name
    assert json.loads((work / "trainjob.json").read_text()) == job  # the manifest sent, kept beside the run
    assert {p.name: p.read_bytes() for p in (work / "task").iterdir()} == before  # the staged task, copied as is
    # the run the two workers wrote (rank 0) is now the step's output
    assert (out / "adapter" / "adapter_config.json").exists()
    written = json.loads((out / "metrics.json").read_text())
    assert written["world_size"] == 2 and written["task"] == "tiny-sentiment"
    assert metrics["tuned"] == written["tuned"] and 0.0 <= metrics["tuned"] <= 1.0
    assert (metrics["trainjob"], metrics["trainjob_namespace"], metrics["nodes"], metrics["gpus_per_node"]) == (
        name, "team-a", 1, 2)
    assert {p.name: p.read_bytes() for p in task_dir.iterdir()} == before  # input never modified


def test_train_step_refuses_several_nodes_outside_a_cluster_before_writing(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    task_dir = tiny_task(tmp_path / "staged")
    with pytest.raises(UserError, match="train nodes=2: several nodes need a Kubernetes cluster"):
        train_step(task_dir, tmp_path / "out", TrainRunSpec(nodes=2, gpus_per_node=1))
    assert not (tmp_path / "out").exists()


def test_hand_off_needs_the_shared_volume(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    task_dir = tiny_task(tmp_path / "staged")
    api = FakeTrainJobs([COMPLETE])
    with pytest.raises(UserError, match=r"the shared volume is not mounted here"):
        train_step(task_dir, tmp_path / "out", TrainRunSpec(nodes=2), trainjob={"api": api, "namespace": "ns",
                                                                   "shared_dir": tmp_path / "missing"})
    assert api.calls == [] and not (tmp_path / "out").exists()
