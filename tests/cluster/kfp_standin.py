"""A stand-in for the Kubeflow Pipelines v2beta1 REST API on loopback, strict about what it is sent.

Kubeflow Pipelines is a set of containers that cannot run here; this real HTTP server answers the calls
`taskloom pipeline register` and `submit` make (healthz, pipelines, versions and their upload,
experiments, runs) the way the KFP API server does, and checks every request against the published
API: each JSON body and filter against the kfp_server_api models (no field the model lacks, at any
depth; the model's types and enum values; the fields the real server requires; none of the fields
only the server sets), each upload for the `uploadfile` part of a `.yaml` file, the run's parameters
against the uploaded pipeline's inputs, the bearer token when one is required, and a profile namespace
in multi-user mode. A request that breaks the contract gets a 400, and the reason is kept in `errors`.

Used by tests/pipelines/test_kfp_submit.py and the README walkthrough (test_walkthrough.py).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import kfp_server_api
import yaml

API = "/apis/v2beta1"
NOW = "2026-01-01T00:00:00Z"
# Fields of a request body that only the server sets: a client sending one is confused about the API.
SERVER_SET = {
    "V2beta1Pipeline": {"pipeline_id", "created_at", "error"},
    "V2beta1Experiment": {"experiment_id", "created_at", "storage_state", "last_run_created_at"},
    "V2beta1Run": {
        "run_id",
        "created_at",
        "scheduled_at",
        "finished_at",
        "state",
        "error",
        "run_details",
        "state_history",
        "storage_state",
        "recurring_run_id",
        "plugins_output",
        "pipeline_version_id",
    },
}

# A pipeline parameter's type in the compiled spec → the JSON value a run must give it.
PARAMETER_TYPES = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": bool,
    "LIST": list,
    "STRUCT": dict,
}


class ContractError(Exception):
    """A request the published KFP API (or the server's own checks) would not accept."""


def _check(kind: str, value: Any, where: str) -> None:
    """`value` (parsed JSON) is a `kind` as kfp_server_api defines it, with no field the model lacks."""
    if value is None:
        return
    if kind.startswith("list["):
        if not isinstance(value, list):
            raise ContractError(f"{where}: expected a list, got {value!r}")
        for i, v in enumerate(value):
            _check(kind[5:-1], v, f"{where}[{i}]")
        return
    if kind.startswith("dict("):
        if not isinstance(value, dict):
            raise ContractError(f"{where}: expected an object, got {value!r}")
        for k, v in value.items():
            _check(kind.split(", ", 1)[1][:-1], v, f"{where}.{k}")
        return
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}
    if kind == "object":
        return
    if kind in simple:
        if not isinstance(value, simple[kind]) or (kind != "bool" and isinstance(value, bool)):
            raise ContractError(f"{where}: expected {kind}, got {value!r}")
        return
    model = getattr(kfp_server_api, kind)
    if model.attribute_map == {} and hasattr(model, "allowable_values"):  # an enum
        if value not in model.allowable_values:
            raise ContractError(f"{where}: {value!r} is not one of {model.allowable_values}")
        return
    if not isinstance(value, dict):
        raise ContractError(f"{where}: expected a {kind} object, got {value!r}")
    by_json = {j: a for a, j in model.attribute_map.items()}
    unknown = sorted(set(value) - set(by_json))
    if unknown:
        raise ContractError(f"{where}: {kind} has no field {unknown[0]!r}")
    for key, v in value.items():
        _check(model.openapi_types[by_json[key]], v, f"{where}.{key}")


@dataclass
class _Json:
    data: str


def conform(kind: str, value: Any) -> Any:
    """`value` checked strictly against model `kind`, then deserialized by the generated client (its
    setters validate on the client side): the model object."""
    _check(kind, value, kind)
    return kfp_server_api.ApiClient().deserialize(_Json(json.dumps(value)), kind)


class NotFound(Exception):
    """An id or a path the server does not know: a 404."""


def _get(items: dict[str, dict], key: str | None, what: str) -> dict:
    if key not in items:
        raise NotFound(f"{what} {key!r}")
    return items[key]


def _require(cond: Any, message: str) -> None:
    if not cond:
        raise ContractError(message)


def pipeline_inputs(package: bytes) -> dict[str, dict]:
    """The root parameters an uploaded pipeline declares: {name: its inputDefinitions entry}."""
    spec = next(yaml.safe_load_all(package))
    return spec["root"].get("inputDefinitions", {}).get("parameters", {})


class KfpStandIn(ThreadingHTTPServer):
    """The API server's state (pipelines, versions, uploads, experiments, runs) and what it was sent.

    `multi_user`: answer healthz as a multi-user KFP and require a namespace where the real one does;
    `token`: require `Authorization: Bearer <token>`; `fail`: {"METHOD /path" or "*": status} answers
    those calls with that error, as a broken or refusing server would."""

    def __init__(self, multi_user: bool = False, token: str | None = None):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.multi_user, self.token = multi_user, token
        self.fail: dict[str, int] = {}
        self.calls: list[dict] = []
        self.errors: list[str] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.packages: dict[str, bytes] = {}  # version id → the uploaded file
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> KfpStandIn:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()

    def calls_to(self, method: str, path: str) -> list[dict]:
        return [c for c in self.calls if c["method"] == method and c["path"] == API + path]


class _Handler(BaseHTTPRequestHandler):
    server: KfpStandIn

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _reply(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = {"method": method, "path": url.path, "query": query, "headers": dict(self.headers), "body": body}
        s = self.server
        with s.lock:
            s.calls.append(call)
            status = s.fail.get(f"{method} {url.path}", s.fail.get("*"))
            if status:
                return self._reply(
                    status,
                    {
                        "error": "stand-in failure",
                        "code": 13,
                        "message": f"injected failure {status} for {method} {url.path}",
                    },
                )
            if s.token and self.headers.get("Authorization") != f"Bearer {s.token}":
                return self._reply(
                    401,
                    {
                        "error": "Unauthenticated",
                        "code": 16,
                        "message": "Failed to authenticate the request: no valid bearer token",
                    },
                )
            try:
                status, answer = self._route(method, url.path, query, body)
            except ContractError as e:
                s.errors.append(f"{method} {url.path}: {e}")
                status, answer = 400, {"error": str(e), "code": 3, "message": str(e)}
            except NotFound as e:
                status, answer = 404, {"error": f"not found: {e}", "code": 5, "message": f"not found: {e}"}
            self._reply(status, answer)

    def _json(self, kind: str, body: bytes) -> dict:
        try:
            value = json.loads(body)
        except ValueError:
            raise ContractError(f"the body is not JSON: {body[:80]!r}") from None
        conform(kind, value)
        sent = sorted(set(value) & SERVER_SET.get(kind, set()))
        _require(not sent, f"{kind}: {sent} is set by the server, not sent by a client")
        return value

    def _namespace(self, query_or_body: dict) -> str:
        namespace = query_or_body.get("namespace") or ""
        _require(not (self.server.multi_user and not namespace), "in multi-user mode a namespace is required")
        _require(not (namespace and not self.server.multi_user), "in single-user mode there are no namespaces")
        return namespace

    def _listed(self, items: list[dict], query: dict) -> list[dict]:
        """`items` through the request's v2beta1 Filter (EQUALS on display_name, what taskloom sends)."""
        _require(set(query) <= {"filter", "page_size", "page_token", "sort_by", "namespace"}, f"query {query}")
        if "filter" not in query:
            return items
        flt = conform("V2beta1Filter", json.loads(query["filter"]))
        for p in flt.predicates or []:
            _require(p.operation == "EQUALS" and p.key in ("display_name", "name"), f"filter {query['filter']}")
            items = [i for i in items if i.get(p.key) == p.string_value]
        return items

    def _route(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict]:
        s = self.server
        _require(path.startswith(API + "/"), f"not a v2beta1 path: {path}")
        route = path[len(API) :]
        parts = route.strip("/").split("/")
        if (method, route) == ("GET", "/healthz"):
            return 200, {"multi_user": s.multi_user, "pipeline_store": "database"}
        if (method, route) == ("GET", "/pipelines"):
            ns = self._namespace(query)
            found = self._listed([p for p in s.pipelines.values() if p.get("namespace", "") == ns], query)
            return 200, {"pipelines": found, "total_size": len(found)}
        if (method, route) == ("POST", "/pipelines"):
            p = self._json("V2beta1Pipeline", body)
            _require(p.get("display_name"), "V2beta1Pipeline: display_name is required")
            ns = self._namespace(p)
            if any(
                q["display_name"] == p["display_name"] and q.get("namespace", "") == ns for q in s.pipelines.values()
            ):
                return 409, {"error": "already exists", "code": 6, "message": "pipeline name already exists"}
            p = {**p, "pipeline_id": str(uuid.uuid4()), "created_at": NOW}
            s.pipelines[p["pipeline_id"]] = p
            return 200, p
        if method == "GET" and len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
            pipeline = _get(s.pipelines, parts[1], "pipeline")
            mine = [v for v in s.versions.values() if v["pipeline_id"] == pipeline["pipeline_id"]]
            found = self._listed(mine, query)
            return 200, {"pipeline_versions": found, "total_size": len(found)}
        if (method, route) == ("POST", "/pipelines/upload_version"):
            _require(set(query) <= {"name", "display_name", "pipelineid", "description", "tags"}, f"query {query}")
            pipeline = _get(s.pipelines, query.get("pipelineid"), "pipeline")
            name = query.get("display_name") or query.get("name")
            _require(name, "upload_version: a name is required")
            filename, package = self._upload(body)
            _require(filename.endswith((".yaml", ".yml")), f"upload: {filename!r} is not a .yaml file")
            _require(pipeline_inputs(package) is not None, "upload: not a compiled pipeline")
            if any(
                v["display_name"] == name and v["pipeline_id"] == pipeline["pipeline_id"] for v in s.versions.values()
            ):
                return 409, {"error": "already exists", "code": 6, "message": "pipeline version name already exists"}
            v = {
                "pipeline_id": pipeline["pipeline_id"],
                "pipeline_version_id": str(uuid.uuid4()),
                "name": query.get("name", name),
                "display_name": name,
                "description": query.get("description", ""),
                "created_at": NOW,
            }
            s.versions[v["pipeline_version_id"]] = v
            s.packages[v["pipeline_version_id"]] = package
            return 200, v
        if (method, route) == ("GET", "/experiments"):
            ns = self._namespace(query)
            found = self._listed([e for e in s.experiments.values() if e.get("namespace", "") == ns], query)
            return 200, {"experiments": found, "total_size": len(found)}
        if (method, route) == ("POST", "/experiments"):
            e = self._json("V2beta1Experiment", body)
            _require(e.get("display_name"), "V2beta1Experiment: display_name is required")
            self._namespace(e)
            e = {**e, "experiment_id": str(uuid.uuid4()), "created_at": NOW, "storage_state": "AVAILABLE"}
            s.experiments[e["experiment_id"]] = e
            return 200, e
        if (method, route) == ("POST", "/runs"):
            return 200, self._run(self._json("V2beta1Run", body))
        raise NotFound(f"{method} {path}")

    def _upload(self, body: bytes) -> tuple[str, bytes]:
        kind = self.headers.get("Content-Type", "")
        _require(kind.startswith("multipart/form-data; boundary="), f"upload: Content-Type {kind!r}")
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {kind}\r\n\r\n".encode() + body)
        parts = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "uploadfile"]
        _require(len(parts) == 1, "upload: expected one multipart field named uploadfile")
        return parts[0].get_filename() or "", parts[0].get_payload(decode=True)

    def _run(self, run: dict) -> dict:
        s = self.server
        _require(run.get("display_name"), "V2beta1Run: display_name is required")
        _require(not run.get("pipeline_spec"), "V2beta1Run: expected a pipeline_version_reference, not an inline spec")
        ref = run.get("pipeline_version_reference") or {}
        pipeline = _get(s.pipelines, ref.get("pipeline_id"), "pipeline")
        version_id = ref.get("pipeline_version_id")
        if not version_id:  # the server takes the pipeline's latest version
            version_id = [v for v in s.versions.values() if v["pipeline_id"] == pipeline["pipeline_id"]][-1][
                "pipeline_version_id"
            ]
        _require(
            _get(s.versions, version_id, "pipeline version")["pipeline_id"] == pipeline["pipeline_id"],
            "the version is not the pipeline's",
        )
        experiment = _get(s.experiments, run["experiment_id"], "experiment") if run.get("experiment_id") else None
        _require(not (s.multi_user and experiment is None), "in multi-user mode a run needs an experiment_id")
        _require(
            not (s.multi_user and pipeline.get("namespace") not in ("", experiment and experiment["namespace"])),
            "the pipeline is in another namespace than the run's experiment",
        )
        declared = pipeline_inputs(s.packages[version_id])
        given = (run.get("runtime_config") or {}).get("parameters") or {}
        _require(set(given) <= set(declared), f"parameters {sorted(set(given) - set(declared))} are not the pipeline's")
        missing = [
            k for k, d in declared.items() if k not in given and "defaultValue" not in d and not d.get("isOptional")
        ]
        _require(not missing, f"parameters {missing} are required by the pipeline")
        for key, value in given.items():
            kind = PARAMETER_TYPES[declared[key]["parameterType"]]
            _require(
                isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool),
                f"parameter {key}: {value!r} is not a {declared[key]['parameterType']}",
            )
        run = {**run, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": NOW}
        s.runs.append(run)
        return run
