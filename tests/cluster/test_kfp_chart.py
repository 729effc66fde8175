"""The Helm chart and the plain manifests, checked without a cluster.

- `helm lint --strict` (which enforces values.schema.json) with the real helm from `make tools`;
- every built-in kind of the render validated strictly against the Kubernetes 1.33 OpenAPI schemas;
- the Argo Events EventSource and Sensor validated against the upstream Argo Events JSON schema made
  strict (no unknown field anywhere; the schema's stale `required` lists dropped), because the CRDs
  themselves accept any spec;
- the Sensor's HTTP trigger builds exactly the body `kfp.Client.run_pipeline` sends to start drift_retrain.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "taskloom"
MANIFESTS = REPO / "manifests"
ARGO_SCHEMA = REPO / "tests" / "data" / "argo-events" / "schema.json"  # vendored: see its README
TOOLS = REPO / ".tools"
K8S_VERSION = "1.33"
# The chart refuses to render without the HMAC Secret's name (no default credentials): every render names one.
HMAC = "events.hmacSecret.name=taskloom-webhook"


@cache
def tool(name: str) -> str:
    """`.tools/helm` or `.tools/kubectl`, installed by `make tools` (which `make test` runs first)."""
    path = TOOLS / name
    assert path.exists(), f"{path} missing: run `make tools`"
    return str(path)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, check=check, cwd=REPO)


def render(*sets: str, namespace: str = "default") -> list[dict]:
    args = ["template", "taskloom", str(CHART), "--namespace", namespace]
    for s in (HMAC, *sets):  # "json:key=0.1" goes through --set-json (plain --set reads 0.1 as a string)
        args += ["--set-json", s[5:]] if s.startswith("json:") else ["--set", s]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


@cache
def argo_definitions() -> dict:
    """The Argo Events schema made strict: `required` dropped (stale upstream), no unknown properties."""
    assert ARGO_SCHEMA.exists(), f"{ARGO_SCHEMA} missing"

    def strict(node):
        if isinstance(node, dict):
            node.pop("required", None)
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)
        return node

    return strict(copy.deepcopy(json.loads(ARGO_SCHEMA.read_text())["definitions"]))


def argo_errors(obj: dict) -> list[str]:
    schema = {"$ref": f"#/definitions/io.argoproj.events.v1alpha1.{obj['kind']}", "definitions": argo_definitions()}
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return render()


def test_helm_lint_strict_passes():
    result = helm("lint", "--strict", str(CHART), "--set", HMAC, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_render_has_every_part(docs):
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted([
        ("TrainingRuntime", "taskloom-torch-distributed"), ("ConfigMap", "taskloom-config"),
        ("Deployment", "taskloom-feast"), ("Deployment", "taskloom-monitor"), ("Deployment", "taskloom-triton"),
        ("EventSource", "taskloom-drift"), ("NetworkPolicy", "taskloom-webhook"),
        ("PersistentVolumeClaim", "taskloom-shared"), ("Role", "taskloom-trainjobs"), ("RoleBinding", "taskloom-trainjobs"),
        ("Role", "taskloom-modeldeployments"), ("RoleBinding", "taskloom-modeldeployments"),
        ("Sensor", "taskloom-retrain"), ("Service", "taskloom-feast"), ("Service", "taskloom-triton"), ("Service", "taskloom-monitor"),
        ("Deployment", "taskloom-gateway"), ("Service", "taskloom-gateway"), ("NetworkPolicy", "taskloom-gateway"),
        *[("NetworkPolicy", f"taskloom-{p}") for p in ("default-deny", "sensor", "gateway-egress", "triton", "operator-triton",
                                                       "operator-egress", "feast", "monitor-egress", "trainer")],
        ("Secret", "taskloom-events-token"), ("Secret", "taskloom-triton-admin"),
        *[("ServiceAccount", f"taskloom-{c}") for c in ("eventsource", "feast", "monitor", "sensor", "triton", "gateway")],
        ("Deployment", "taskloom-operator"), ("ServiceAccount", "taskloom-operator"), ("Role", "taskloom-operator"),
        ("RoleBinding", "taskloom-operator"), ("ClusterRole", "taskloom-default-operator-crd"),
        ("ClusterRoleBinding", "taskloom-default-operator-crd"),
    ])


@pytest.mark.parametrize("sets", [(), ("triton.gpus=0", "json:monitor.config.minEffect=0.1", "kfp.pipelineId=p1",
                                       "kfp.experimentId=e1", "events.webhook.authSecret.name=hook-token")])
def test_builtin_kinds_validate_strictly(sets):
    for obj in render(*sets):
        if obj["apiVersion"].startswith(("argoproj.io/", "trainer.kubeflow.org/")):  # test_trainjob.py checks the latter
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises on unknown or mistyped fields


def test_kubernetes_validation_is_strict():
    bad = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "x"}, "automountToken": False}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_argo_objects_validate_against_the_strict_schema(docs):
    kustomized = yaml.safe_load_all(subprocess.run([tool("kubectl"), "kustomize", str(MANIFESTS)],
                                                   capture_output=True, text=True, check=True).stdout)
    argo = [d for d in [*docs, *kustomized] if d and d["apiVersion"] == "argoproj.io/v1alpha1"]
    assert sorted(d["kind"] for d in argo) == ["EventSource", "EventSource", "Sensor", "Sensor"]
    for obj in argo:
        assert argo_errors(obj) == [], obj["kind"]


def test_the_strict_argo_schema_catches_typos(docs):
    sensor = copy.deepcopy(by_kind(docs, "Sensor")[0])
    http = sensor["spec"]["triggers"][0]["template"]["http"]
    http["secureHeader"] = http.pop("secureHeaders")
    source = copy.deepcopy(by_kind(docs, "EventSource")[0])
    source["spec"]["webhook"]["drift"]["endPoint"] = source["spec"]["webhook"]["drift"].pop("endpoint")
    assert any("'secureHeader' was unexpected" in e for e in argo_errors(sensor))
    assert any("'endPoint' was unexpected" in e for e in argo_errors(source))


def test_triton_runs_on_a_gpu_node_with_health_probes(docs):
    triton = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "taskloom-triton")
    pod = triton["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"  # a string: server-side apply refuses an int
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["command"] == ["tritonserver"]
    assert "--model-repository=/mnt/taskloom/model_repository" in container["args"]
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(container["args"])
    assert {e["name"]: e.get("value") for e in container["env"]}["OMP_WAIT_POLICY"] == "PASSIVE"
    claim = next(v for v in pod["volumes"] if v["name"] == "shared")["persistentVolumeClaim"]["claimName"]
    assert claim == "taskloom-shared"  # the claim the pipeline steps mount (pipelines/placement.py)
    service = next(d for d in by_kind(docs, "Service") if d["metadata"]["name"] == "taskloom-triton")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    no_gpu = next(d for d in render("triton.gpus=0") if d["metadata"]["name"] == "taskloom-triton" and d["kind"] == "Deployment")
    assert "nvidia.com/gpu" not in json.dumps(no_gpu["spec"]["template"]["spec"]["containers"][0]["resources"])


def test_workloads_hold_no_api_token_and_rbac_is_scoped(docs):
    operator = "taskloom-operator"  # the one workload that calls the API (test_rbac_evidence.py holds its Role to its use)
    for sa in by_kind(docs, "ServiceAccount"):
        assert sa.get("automountServiceAccountToken") is (None if sa["metadata"]["name"] == operator else False)
    for dep in by_kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is (dep["metadata"]["name"] == operator)
        assert pod["serviceAccountName"] == dep["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "Role")}
    assert sorted(roles) == ["taskloom-modeldeployments", operator, "taskloom-trainjobs"]
    assert all(r["apiGroups"] != ["*"] and "secrets" not in r["resources"] for r in roles[operator]["rules"])
    assert [b["subjects"] for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == operator] == [
        [{"kind": "ServiceAccount", "name": operator, "namespace": "default"}]]
    roles.pop(operator)
    for role in roles.values():
        assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    assert roles["taskloom-trainjobs"]["rules"] == [
        {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["create", "get", "delete"]}]
    assert roles["taskloom-modeldeployments"]["rules"] == [
        {"apiGroups": ["taskloom.dev"], "resources": ["modeldeployments"], "verbs": ["get", "create", "patch"]}]
    # cluster scope: only the one CRD the operator keeps current, by name, to read and replace
    (crd_role,) = by_kind(docs, "ClusterRole")
    assert crd_role["rules"] == [{"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
                                  "resourceNames": ["modeldeployments.taskloom.dev"], "verbs": ["get", "update"]}]
    (crd_binding,) = by_kind(docs, "ClusterRoleBinding")
    assert crd_binding["roleRef"]["name"] == crd_role["metadata"]["name"]
    assert crd_binding["subjects"] == [{"kind": "ServiceAccount", "name": operator, "namespace": "default"}]
    for binding in by_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
        if binding["metadata"]["name"] != operator:
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"}]


def test_monitor_signs_with_a_referenced_secret_that_the_chart_never_creates(docs):
    # the chart makes only random ones (the webhook's bearer token, Triton's admin key), never the HMAC key
    assert sorted(d["metadata"]["name"] for d in by_kind(docs, "Secret")) == ["taskloom-events-token", "taskloom-triton-admin"]
    monitor = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "taskloom-monitor")
    (container,) = monitor["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TASKLOOM_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "taskloom-webhook", "key": "secret"}
    assert env["TASKLOOM_EVENTS_URL"]["value"] == "http://taskloom-gateway.default.svc:8080/taskloom/drift"
    assert container["command"] == ["taskloom", "monitor"]
    assert container["args"] == [
        "--log=/mnt/taskloom/requests/requests.jsonl", "--feature-repo=/mnt/taskloom/feature_repo",
        "--out=/mnt/taskloom/monitor", "--model=minilm", "--method=mmd", "--alpha=0.05", "--window=300",
        "--min-rows=50", "--consecutive=2", "--cooldown=3", "--permutations=200", "--poll=5",
        "--webhook=http://taskloom-gateway.default.svc:8080/taskloom/drift",  # the gateway, never the webhook itself
        "--metrics-port=9400", "--metrics-host=0.0.0.0",
    ]
    source = by_kind(docs, "EventSource")[0]["spec"]
    assert source["webhook"]["drift"] == {"port": "12000", "endpoint": "/taskloom/drift", "method": "POST",
                                          "maxPayloadSize": 1048576,
                                          "authSecret": {"name": "taskloom-events-token", "key": "token"}}
    assert source["service"]["ports"][0]["port"] == 12000


def _lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            raise KeyError(dotted)
        data = data[part]
    return data


def sensor_request(sensor: dict, event: dict) -> tuple[str, dict]:
    """What the Sensor's HTTP trigger sends for `event` (Argo Events' rules: dataKey, else value; dataTemplate
    over .Input; dest paths set into a JSON object)."""
    http = sensor["spec"]["triggers"][0]["template"]["http"]
    body: dict = {}
    for p in http["payload"]:
        src = p["src"]
        if "dataTemplate" in src:
            value = re.sub(r"\{\{\s*\.Input\.([\w.]+)\s*\}\}", lambda m: str(_lookup(event, m.group(1))), src["dataTemplate"])
        else:
            try:
                value = _lookup(event, src["dataKey"]) if "dataKey" in src else src["value"]
            except KeyError:
                value = src["value"]
        node = body
        *parents, leaf = p["dest"].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return http["url"], body


def test_sensor_starts_drift_retrain_with_the_body_kfp_client_sends():
    import kfp_server_api

    from taskloom.kfp import pipeline_parameters

    docs = render("kfp.pipelineId=11111111-2222", "kfp.pipelineVersionId=v-3333", "kfp.experimentId=exp-4444")
    sensor = by_kind(docs, "Sensor")[0]
    event = {"header": {"Ce-Type": ["taskloom.drift.detected"]}, "body": {"task": "rt-sentiment", "adapter_id": "rt-v7"}}
    url, body = sensor_request(sensor, event)
    assert url == "http://ml-pipeline.kubeflow:8888/apis/v2beta1/runs"
    expected = kfp_server_api.ApiClient().sanitize_for_serialization(kfp_server_api.V2beta1Run(
        display_name="drift-retrain rt-sentiment",
        experiment_id="exp-4444",
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id="11111111-2222", pipeline_version_id="v-3333"),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters={"task": "rt-sentiment", "adapter_id": "rt-v7"}),
    ))
    assert body == expected
    assert set(body["runtime_config"]["parameters"]) <= set(pipeline_parameters("drift_retrain"))
    # an alarm without an adapter id still starts a run; the pipeline then uses the task name
    _, body = sensor_request(sensor, {"body": {"task": "chatterbot-qa"}})
    assert body["runtime_config"]["parameters"] == {"task": "chatterbot-qa", "adapter_id": ""}
    http = sensor["spec"]["triggers"][0]["template"]["http"]
    assert http["method"] == "POST"
    assert http["secureHeaders"] == [{"name": "Authorization", "valueFrom": {
        "secretKeyRef": {"name": "taskloom-kfp-token", "key": "authorization"}}}]
    dep = sensor["spec"]["dependencies"][0]
    assert (dep["eventSourceName"], dep["eventName"]) == ("taskloom-drift", "drift")


def test_sensor_run_deploys_through_the_model_deployment_when_one_is_named():
    """kfp.modelDeployment: the retrain run's deploy step declares its model there (release namespace)."""
    from taskloom.kfp import pipeline_parameters

    sensor = by_kind(render("kfp.pipelineId=p1", "kfp.modelDeployment=rt"), "Sensor")[0]
    _, body = sensor_request(sensor, {"body": {"task": "rt-sentiment", "adapter_id": ""}})
    assert body["runtime_config"]["parameters"] == {
        "task": "rt-sentiment", "adapter_id": "", "model_deployment": "rt", "model_deployment_namespace": "default"}
    assert set(body["runtime_config"]["parameters"]) <= set(pipeline_parameters("drift_retrain"))
    result = helm("template", "t", str(CHART), "--set", HMAC, "--set", "kfp.modelDeployment=Bad_Name", check=False)
    assert result.returncode != 0 and "modelDeployment" in result.stderr


def test_monitor_args_follow_the_values_and_parse_as_the_real_cli():
    import typer

    from taskloom.cli import app

    (monitor,) = [d for d in render("json:monitor.config.minEffect=0.2", "monitor.config.windowSeconds=60",
                                    "monitor.extraArgs={--task,rt-sentiment}")
                  if d["kind"] == "Deployment" and d["metadata"]["name"] == "taskloom-monitor"]
    (container,) = monitor["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "--min-effect=0.2" in args and "--window=60" in args and args[-2:] == ["--task", "rt-sentiment"]
    command = typer.main.get_command(app).commands[container["command"][1]]
    ctx = command.make_context("monitor", list(args), resilient_parsing=False)
    assert ctx.params["min_effect"] == 0.2 and ctx.params["window"] == 60.0 and ctx.params["task"] == ["rt-sentiment"]
    assert ctx.params["webhook"].endswith("-gateway.default.svc:8080/taskloom/drift") and str(ctx.params["log"]).endswith("requests.jsonl")


@pytest.mark.parametrize(
    "bad, field",
    [
        ("triton.gpus=two", "gpus"),                       # a string where a number goes
        ("triton.modelControlMode=poll", "modelControlMode"),  # the deploy step needs explicit model control
        ("monitor.config.method=energy", "method"),
        ("monitor.config.windowSize=500", "windowSize"),        # the monitor reads seconds, not rows
        ("triton.ports.http=70000", "http"),
        ("triton.gpu=1", "gpu"),                           # a misspelt key
        ("kfp.host=ml-pipeline:8888", "host"),             # not a URL
        ("monitor.config.alpha=1.5", "alpha"),
    ],
)
def test_values_schema_rejects_bad_values(bad, field):
    result = helm("lint", "--strict", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0, f"helm lint accepted {bad}"
    assert field in result.stdout + result.stderr


def test_parts_can_be_switched_off():
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render("triton.enabled=false", "events.enabled=false",
                                                                 "persistence.create=false", "trainer.enabled=false",
                                                                 "operator.enabled=false")}
    assert not any(k in ("EventSource", "Sensor", "PersistentVolumeClaim", "Role",
                         "TrainingRuntime", "ClusterRole", "ClusterRoleBinding") for k, _ in kinds)
    # what still runs keeps its policies (default deny, Feast's allows, the monitor's egress); none for parts off
    assert {n for k, n in kinds if k == "NetworkPolicy"} == {"taskloom-default-deny", "taskloom-feast",
                                                            "taskloom-monitor-egress"}
    assert ("Deployment", "taskloom-triton") not in kinds and ("Deployment", "taskloom-monitor") in kinds
    assert ("Deployment", "taskloom-operator") not in kinds


def test_plain_manifests_match_the_chart():
    out = subprocess.run([tool("kubectl"), "kustomize", str(MANIFESTS)], capture_output=True, text=True, check=True)
    plain = [d for d in yaml.safe_load_all(out.stdout) if d]
    chart = {(d["kind"], d["metadata"]["name"]): d for d in render(namespace="kubeflow")}
    assert {d["metadata"]["namespace"] for d in plain} == {"kubeflow"}
    for obj in plain:
        twin = chart[(obj["kind"], obj["metadata"]["name"])]
        for key in ("spec", "rules", "roleRef", "subjects", "automountServiceAccountToken"):
            assert obj.get(key) == twin.get(key), f"manifests/ {obj['kind']} {obj['metadata']['name']}: {key} differs from the chart"
        if not obj["apiVersion"].startswith("argoproj.io/"):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    assert {d["kind"] for d in plain} == {"ServiceAccount", "Role", "RoleBinding", "EventSource", "Sensor", "NetworkPolicy"}


def test_no_hmac_secret_no_install():
    """No default credentials: without events.hmacSecret.name the chart stops with one line that names
    the value and the command creating the Secret."""
    result = subprocess.run([tool("helm"), "template", "taskloom", str(CHART), "--namespace", "ml"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert "events.hmacSecret.name is required" in line
    assert "kubectl -n ml create secret generic taskloom-webhook --from-literal=secret=" in line


def _deployment(docs, name):
    return next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == name)


def test_gateway_verifies_and_forwards_with_the_token_only_it_and_the_webhook_hold(docs):
    import typer

    from taskloom.cli import app

    pod = _deployment(docs, "taskloom-gateway")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["taskloom", "events", "gateway"]
    cmd = typer.main.get_command(app).commands["events"].commands["gateway"]
    params = cmd.make_context("gateway", list(c["args"]), resilient_parsing=False).params  # parses as the real CLI
    assert params["forward"] == "http://taskloom-drift-eventsource-svc.default.svc:12000/taskloom/drift"
    assert (params["host"], params["port"], params["max_age"]) == ("0.0.0.0", 8080, 300.0)
    volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert volumes["hmac"]["secretName"] == "taskloom-webhook" and volumes["token"]["secretName"] == "taskloom-events-token"
    assert str(params["secret_file"]) == mounts["hmac"] + "/secret" and str(params["token_file"]) == mounts["token"] + "/token"
    assert c["readinessProbe"]["httpGet"] == c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    token = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "taskloom-events-token")
    assert len(base64.b64decode(token["data"]["token"])) == 48
    source = by_kind(docs, "EventSource")[0]["spec"]
    assert source["webhook"]["drift"]["authSecret"] == {"name": "taskloom-events-token", "key": "token"}

    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(docs, "NetworkPolicy")}
    webhook, gateway = policies["taskloom-webhook"], policies["taskloom-gateway"]
    assert webhook["podSelector"]["matchLabels"] == {"eventsource-name": "taskloom-drift"}
    (rule,) = webhook["ingress"]
    assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in rule["from"]] == ["gateway"]
    assert gateway["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    (rule,) = gateway["ingress"]
    assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for f in rule["from"]] == ["monitor"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_a_token_secret_of_ones_own_replaces_the_generated_one():
    docs = render("events.webhook.authSecret.name=hook-token")
    assert "taskloom-events-token" not in {d["metadata"]["name"] for d in by_kind(docs, "Secret")}
    pod = _deployment(docs, "taskloom-gateway")["spec"]["template"]["spec"]
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in pod["volumes"]}["token"] == "hook-token"
    assert by_kind(docs, "EventSource")[0]["spec"]["webhook"]["drift"]["authSecret"]["name"] == "hook-token"


def test_triton_model_control_needs_the_admin_key(docs):
    (c,) = _deployment(docs, "taskloom-triton")["spec"]["template"]["spec"]["containers"]
    assert "--http-restricted-api=model-repository:taskloom-admin-key=$(TRITON_ADMIN_KEY)" in c["args"]
    assert "--grpc-restricted-protocol=model-repository:taskloom-admin-key=$(TRITON_ADMIN_KEY)" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "taskloom-triton-admin", "key": "key"}
    # the same Secret the pipelines' deploy step reads (pipelines/placement.py)
    from taskloom_pipelines.placement import TRITON_ADMIN_SECRET

    assert TRITON_ADMIN_SECRET == ("taskloom-triton-admin", "key")
    own = render("triton.adminKey.create=false", "triton.adminKey.secret.name=my-key", "triton.adminKey.header=x-admin")
    assert "taskloom-triton-admin" not in {d["metadata"]["name"] for d in by_kind(own, "Secret")}
    (c,) = _deployment(own, "taskloom-triton")["spec"]["template"]["spec"]["containers"]
    assert "--http-restricted-api=model-repository:x-admin=$(TRITON_ADMIN_KEY)" in c["args"]


@pytest.mark.parametrize("method, text", [("mmd", "true"), ("mmd+bbsd", "true"), ("auto", "true"),
                                          ("chi2", "false"), ("bbsd", "false")])
def test_request_text_is_logged_exactly_when_the_monitor_embeds_it(method, text):
    (triton,) = [d for d in render(f"monitor.config.method={method}", "triton.requestLog.enabled=true")
                 if d["kind"] == "Deployment" and d["metadata"]["name"] == "taskloom-triton"]
    env = {e["name"]: e.get("value") for c in triton["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert env["TASKLOOM_REQUEST_LOG_TEXT"] == text
    if text == "true":  # an embedding detector with the text switched off: the install stops, naming the fix
        r = helm("template", "taskloom", str(CHART), "--set", HMAC, "--set", f"monitor.config.method={method}",
                 "--set", "triton.requestLog.enabled=true", "--set", "triton.requestLog.includeText=false", check=False)
        assert r.returncode != 0 and "use monitor.config.method=chi2 or bbsd" in r.stderr
