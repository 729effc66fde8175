"""Running taskloom's Kubeflow pipelines: locally with kfp.local, compiled to YAML, or submitted to a cluster.

The only module of `taskloom` that touches kfp, and only inside functions, so importing taskloom stays
fast and needs no KFP. Pipelines are looked up by name in the `taskloom.pipelines` entry points; parameters arrive as strings
(from the CLI or an event) and are converted to the pipeline's declared types here, at the boundary.

    taskloom pipeline run train_merge_deploy -p max_steps=20 --root runs/kfp
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from taskloom import images
from taskloom.environment import apply_local_env, read_credential
from taskloom.errors import UserError

# The entry point group pipelines register in (pyproject.toml): name → the @dsl.pipeline function. The
# pipelines live outside `taskloom` (they import kfp at module level), so they are found, not imported.
PIPELINE_GROUP = "taskloom.pipelines"

# Cluster paths (the shared volume) that a local run redirects under its root unless given.
LOCAL_PATH_PARAMS = ("feature_repo", "model_repository")


def pipeline_names() -> list[str]:
    """The registered pipelines, sorted (listing them imports none of them)."""
    return sorted({ep.name for ep in entry_points(group=PIPELINE_GROUP)})


def load_pipeline(name: str) -> Any:
    """The pipeline function registered under `name` (a KFP pipeline: callable, with `.component_spec`)."""
    found = [ep for ep in entry_points(group=PIPELINE_GROUP) if ep.name == name]
    if not found:
        raise UserError(f"unknown pipeline {name!r}: use one of [{', '.join(pipeline_names())}]")
    return found[0].load()


def pipeline_parameters(name: str) -> dict[str, tuple[str, Any]]:
    """`{parameter: (type, default)}` as declared by the pipeline; type is one of String, Integer, Float,
    Boolean, List, Dict (KFP's names)."""
    spec = load_pipeline(name).component_spec
    return {k: (v.type, v.default) for k, v in (spec.inputs or {}).items()}


def _coerce(name: str, key: str, kind: str, value: Any) -> Any:
    import json

    if not isinstance(value, str):
        return value
    try:
        if kind == "Integer":
            return int(value)
        if kind == "Float":
            return float(value)
        if kind == "Boolean":
            low = value.strip().lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if kind in ("List", "Dict"):
            return json.loads(value)
    except ValueError:
        want = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(kind, "JSON")
        raise UserError(f"pipeline {name}: parameter {key}: expected {want}, got {value!r}") from None
    return value


def coerce_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check parameter names against the pipeline and convert string values to the declared types."""
    declared = pipeline_parameters(name)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise UserError(f"pipeline {name}: unknown parameter {unknown[0]!r}: use one of [{', '.join(declared)}]")
    return {k: _coerce(name, k, declared[k][0], v) for k, v in params.items()}


def _jsonable(value: Any) -> Any:
    """A pipeline output as plain JSON: artifacts become {uri, path, metadata}."""
    if hasattr(value, "uri") and hasattr(value, "metadata"):
        path = getattr(value, "path", None)
        return {"uri": value.uri, "path": str(path) if path else None, "metadata": dict(value.metadata or {})}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@contextlib.contextmanager
def root_logger_kept():
    """Put the root logger's level and handlers back as they were.

    kfp.local swaps them for every task, from one thread per parallel task and without a lock, so
    interleaved tasks can leave INFO and a handler bound to a stream that is closed by now (the run's
    log, a captured stdout): every later log line would then fail with "I/O operation on closed file"."""
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def run_local(name: str, params: dict[str, Any], root: str | Path, quiet: bool = False) -> dict:
    """Run a pipeline with kfp.local in this environment (SubprocessRunner, no venv per step).

    Artifacts land in `root/<pipeline>-<timestamp>/`; unless given, the Feast repository and the
    Triton model repository live in `root/feature_repo` and `root/model_repository`. A failed step
    gives state FAILED and its error, not an exception. `quiet` sends the steps' logs to
    `<run folder>/run.log` instead of stdout."""
    fn = load_pipeline(name)
    kwargs = coerce_params(name, params)
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise UserError(f"--root {root}: is a file, expected a folder")
    root.mkdir(parents=True, exist_ok=True)
    declared = pipeline_parameters(name)
    for key in LOCAL_PATH_PARAMS:
        if key in declared and key not in kwargs:
            kwargs[key] = str(root / key)
    apply_local_env()

    import warnings

    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    spec_name = fn.component_spec.name  # e.g. "train-merge-deploy": the run folder's prefix
    before = {p.name for p in root.iterdir()}
    state, error, outputs = "SUCCEEDED", None, {}
    log_fd, log_path = tempfile.mkstemp(dir=root, prefix=".run.", suffix=".log")
    with os.fdopen(log_fd, "w") as log, warnings.catch_warnings(), root_logger_kept():
        # Expected locally: cluster settings (GPU, CPU, memory) are ignored, and the steps run in
        # this environment rather than in the image they name.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        with contextlib.redirect_stdout(log) if quiet else contextlib.nullcontext():
            try:
                task = fn(**kwargs)
                outputs = {k: _jsonable(v) for k, v in (task.outputs or {}).items()}
            except (
                RuntimeError
            ) as e:  # kfp.local: "Pipeline '...' finished with status FAILURE. Inner task failed: '...'."
                state, error = "FAILED", " ".join(str(e).split())
    runs = sorted(p for p in root.iterdir() if p.name not in before and p.name.startswith(spec_name + "-"))
    run_dir = runs[-1] if runs else None
    run_id = run_dir.name if run_dir else f"{spec_name}-{uuid.uuid4().hex[:12]}"
    result: dict[str, Any] = {
        "pipeline": name,
        "run_id": run_id,
        "state": state,
        "outputs": outputs,
        "run_dir": str(run_dir) if run_dir else None,
        "parameters": kwargs,
    }
    if quiet:
        result["log"] = str(run_dir / "run.log" if run_dir else root / f"{run_id}.log")
        os.replace(log_path, result["log"])
    else:
        os.unlink(log_path)
    if error:
        result["error"] = error
    return result


def compile_pipeline(name: str, out: str | Path) -> Path:
    """Compile a pipeline to KFP v2 YAML (the pipeline spec, then the kubernetes platform spec), atomically."""
    fn = load_pipeline(name)
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder, expected a YAML file path")
    from kfp import compiler

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".yaml")
    os.close(fd)
    try:
        compiler.Compiler().compile(fn, package_path=tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


# The Kubeflow Pipelines REST API that `submit` and `register` speak (KFP 2.x), and what a user passes.
KFP_API = "/apis/v2beta1"
DEFAULT_EXPERIMENT = "taskloom"
# The service account a multi-user KFP profile gives its pipeline runs (Kubeflow's profile controller).
PROFILE_SERVICE_ACCOUNT = "default-editor"
# A pipeline version's description records the digest of its compiled YAML, so a re-submission can tell
# "the same pipeline again" (reuse the version) from "a changed pipeline under an old version name" (refuse).
DIGEST_PREFIX = "taskloom sha256:"


def read_token(path: str | os.PathLike) -> str:
    """The bearer token in a file: the chart's kfp.tokenSecret format ("Bearer <token>") or the bare token."""
    try:
        value = read_credential(path, "KFP token")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--token-file {path}: cannot read it ({type(e).__name__})") from None
    if value[:7].lower() == "bearer ":
        value = value[7:].strip()
    if not value or any(c.isspace() for c in value):
        raise UserError(f"--token-file {path}: expected one token, or 'Bearer <token>', on one line")
    return value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect from the API is a login page (an auth proxy in front of KFP), never an answer to follow."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class KfpApi:
    """The few KFP v2beta1 REST calls taskloom makes, over urllib: request bodies are kfp_server_api models
    serialized as the generated client does, so what is sent is what the published API defines; every
    failure (unreachable, 401, 404, 500, not JSON) becomes one UserError line naming the host and call."""

    def __init__(self, host: str, token: str | None = None, token_file: str | None = None, timeout: float = 30.0):
        if not str(host).startswith(("http://", "https://")):
            raise UserError(f"--host {host!r}: expected a URL like http://ml-pipeline.kubeflow:8888")
        self.host = host.rstrip("/")
        self.token, self.token_file, self.timeout = token, token_file, timeout
        self._opener = urllib.request.build_opener(_NoRedirect())

    @staticmethod
    def body(model: Any) -> dict:
        """A kfp_server_api model as the JSON the generated client sends (unset fields left out)."""
        import kfp_server_api

        return kfp_server_api.ApiClient().sanitize_for_serialization(model)

    def call(
        self,
        method: str,
        path: str,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
        upload: tuple[str, bytes] | None = None,
    ) -> dict:
        """One request; `body` is a model (sent as JSON), `upload` a (filename, bytes) sent as the
        multipart field `uploadfile` (KFP's upload endpoints). The answer's JSON object."""
        url = f"{self.host}{KFP_API}{path}"
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(self.body(body)).encode()
            headers["Content-Type"] = "application/json"
        elif upload is not None:
            boundary = uuid.uuid4().hex
            filename, content = upload
            data = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="uploadfile"; filename="{filename}"\r\n'
                    f"Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                + content
                + f"\r\n--{boundary}--\r\n".encode()
            )
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        where = f"{method} {KFP_API}{path}"
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw, kind = response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            raise UserError(self._refusal(where, e)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            raise UserError(
                f"--host {self.host}: cannot reach the Kubeflow Pipelines API ({type(reason).__name__}: {reason})"
            ) from None
        try:
            answer = json.loads(raw or b"{}")
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise UserError(
                f"--host {self.host}: {where} answered {kind or 'a body'} that is not a JSON object: "
                "is --host the KFP API (the ml-pipeline service)?"
            )
        return answer

    def _refusal(self, where: str, e: urllib.error.HTTPError) -> str:
        """One line for an HTTP error answer, with the server's own message and what to try."""
        try:
            detail = json.loads(e.read() or b"{}")
        except (ValueError, OSError):
            detail = None
        message = (detail.get("message") or detail.get("error") or "") if isinstance(detail, dict) else ""
        message = " ".join(str(message).split())[:300]
        head = f"--host {self.host}: {where} answered {e.code} {e.reason}"
        if e.code in (301, 302, 303, 307, 308):
            hint = f"redirected to {e.headers.get('Location', '?')} (a login page): give --token-file, or use the ml-pipeline service address"
        elif e.code == 401:
            hint = (
                f"the token in {self.token_file} was refused"
                if self.token
                else "this KFP wants a token: give --token-file (a file holding the token or 'Bearer <token>')"
            )
        elif e.code == 403:
            hint = "the token's identity may not do this (in multi-user KFP: a namespace it is not a contributor of?)"
        elif e.code == 404:
            hint = "is --host the Kubeflow Pipelines 2.x API (the ml-pipeline service, port 8888)?"
        else:
            hint = "the Kubeflow Pipelines API failed"
        return f"{head}: {message + ': ' if message else ''}{hint}"

    def find(
        self, path: str, items: str, display_name: str, query: Mapping[str, str | None] | None = None
    ) -> dict | None:
        """The one listed object whose display_name equals `display_name`, or None; filtered by the server
        (a v2beta1 Filter, as kfp.Client sends it) and checked here."""
        import kfp_server_api

        flt = kfp_server_api.V2beta1Filter(
            predicates=[
                kfp_server_api.V2beta1Predicate(operation="EQUALS", key="display_name", string_value=display_name)
            ]
        )
        found: list[dict] = []
        token: str | None = None
        for _ in range(100):  # pages of 100: a name is unique, so one page is the usual case
            page = self.call(
                "GET",
                path,
                {**(query or {}), "filter": json.dumps(self.body(flt)), "page_size": "100", "page_token": token},
            )
            found += [x for x in page.get(items) or [] if x.get("display_name") == display_name]
            token = page.get("next_page_token") or None
            if not token:
                break
        return found[0] if found else None


def _pipeline_package(name: str) -> bytes:
    """The pipeline compiled to KFP v2 YAML, as `taskloom pipeline compile` writes it."""
    with tempfile.TemporaryDirectory() as tmp:
        return compile_pipeline(name, Path(tmp) / f"{name}.yaml").read_bytes()


def _namespace_for(api: KfpApi, namespace: str | None) -> str | None:
    """Check --namespace against the server's mode: a multi-user KFP needs the profile namespace, a
    single-user one has none."""
    multi_user = bool(api.call("GET", "/healthz").get("multi_user"))
    if multi_user and not namespace:
        raise UserError(
            f"--host {api.host}: this Kubeflow Pipelines is multi-user: give --namespace (your profile namespace)"
        )
    if namespace and not multi_user:
        raise UserError(
            f"--namespace {namespace}: the Kubeflow Pipelines at {api.host} is single-user: leave --namespace out"
        )
    return namespace or None


def _id(api: KfpApi, obj: dict, key: str, where: str) -> str:
    if not obj.get(key):
        raise UserError(f"--host {api.host}: {where} answered without a {key}: is --host the KFP 2.x API?")
    return str(obj[key])


def _connect(name: str, host: str, token_file: str | None, version: str | None, experiment: str) -> KfpApi:
    """Check what the user gave before any request: the pipeline's name, the URL, the names, the token."""
    load_pipeline(name)
    if version is not None and not version.strip():
        raise UserError("--version: expected a non-empty version name")
    if not experiment.strip():
        raise UserError("--experiment: expected a non-empty experiment name")
    token = read_token(token_file) if token_file else None
    return KfpApi(host, token, token_file)


def _register(api: KfpApi, name: str, namespace: str | None, version: str | None, experiment: str) -> dict:
    """Find or create the pipeline, its version (the compiled YAML uploaded) and the experiment: their ids."""
    import kfp_server_api as m

    namespace = _namespace_for(api, namespace)
    ns = {"namespace": namespace}
    package = _pipeline_package(name)
    digest = hashlib.sha256(package).hexdigest()
    version = version or f"{images.version()}-{digest[:12]}"

    pipeline = api.find("/pipelines", "pipelines", name, ns)
    if pipeline is None:
        body = m.V2beta1Pipeline(display_name=name, description=f"taskloom pipeline {name}", namespace=namespace)
        pipeline = api.call("POST", "/pipelines", body=body)
    pipeline_id = _id(api, pipeline, "pipeline_id", "POST /pipelines")

    found = api.find(f"/pipelines/{pipeline_id}/versions", "pipeline_versions", version)
    uploaded = found is None
    if found is None:
        query = {
            "name": version,
            "display_name": version,
            "pipelineid": pipeline_id,
            "description": DIGEST_PREFIX + digest,
        }
        found = api.call("POST", "/pipelines/upload_version", query, upload=(f"{name}.yaml", package))
    elif found.get("description") != DIGEST_PREFIX + digest:
        raise UserError(
            f"pipeline {name}: version {version!r} exists in KFP with other contents "
            f"(its description: {found.get('description') or 'none'!r}): give a new --version"
        )
    version_id = _id(api, found, "pipeline_version_id", "POST /pipelines/upload_version")

    exp = api.find("/experiments", "experiments", experiment, ns)
    if exp is None:
        exp = api.call("POST", "/experiments", body=m.V2beta1Experiment(display_name=experiment, namespace=namespace))
    return {
        "pipeline": name,
        "host": api.host,
        "namespace": namespace,
        "pipeline_id": pipeline_id,
        "pipeline_version_id": version_id,
        "version": version,
        "uploaded": uploaded,
        "experiment": experiment,
        "experiment_id": _id(api, exp, "experiment_id", "POST /experiments"),
    }


def register(
    name: str,
    host: str,
    namespace: str | None = None,
    token_file: str | None = None,
    version: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> dict:
    """Upload a pipeline to KFP once: the pipeline (by name), a version (by name; default: taskloom's
    version and the compiled YAML's digest) and the experiment its runs go to, each reused when it exists.

    Returns their ids: what a run, or the chart's Sensor (kfp.pipelineId, kfp.pipelineVersionId,
    kfp.experimentId), refers to. In a multi-user KFP all of it lives in the profile `namespace`."""
    api = _connect(name, host, token_file, version, experiment)
    return _register(api, name, namespace, version, experiment)


def helm_sets(ids: dict) -> str:
    """The chart values that point the Sensor at a registered pipeline, for `helm --set`."""
    return (
        f"kfp.pipelineId={ids['pipeline_id']},kfp.pipelineVersionId={ids['pipeline_version_id']},"
        f"kfp.experimentId={ids['experiment_id']}"
    )


def run_body(display_name: str, ids: dict, parameters: dict[str, Any], service_account: str | None = None) -> Any:
    """The V2beta1Run that starts a registered pipeline version (the shape the chart's Sensor posts too)."""
    import kfp_server_api as m

    return m.V2beta1Run(
        display_name=display_name,
        experiment_id=ids["experiment_id"],
        pipeline_version_reference=m.V2beta1PipelineVersionReference(
            pipeline_id=ids["pipeline_id"], pipeline_version_id=ids["pipeline_version_id"]
        ),
        runtime_config=m.V2beta1RuntimeConfig(parameters=parameters),
        service_account=service_account,
    )


def submit(
    name: str,
    host: str,
    params: dict[str, Any],
    experiment: str = DEFAULT_EXPERIMENT,
    namespace: str | None = None,
    token_file: str | None = None,
    version: str | None = None,
) -> dict:
    """Start a run on a Kubeflow Pipelines cluster through its v2beta1 REST API: register the pipeline
    (reusing the pipeline, version and experiment when they exist), then create a run of that version.
    In a multi-user KFP the run goes to the profile `namespace` as its `default-editor` service account."""
    api = _connect(name, host, token_file, version, experiment)
    kwargs = coerce_params(name, params)
    ids = _register(api, name, namespace, version, experiment)
    account = PROFILE_SERVICE_ACCOUNT if ids["namespace"] else None
    run = api.call("POST", "/runs", body=run_body(f"{name}-{uuid.uuid4().hex[:8]}", ids, kwargs, account))
    return {**ids, "run_id": _id(api, run, "run_id", "POST /runs"), "state": "SUBMITTED", "parameters": kwargs}
