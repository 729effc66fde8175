"""Running taskloom's Kubeflow pipelines: locally with kfp.local, compiled to YAML, or submitted to a cluster.

The only module of `taskloom` that touches kfp, and only inside functions, so importing taskloom stays
fast and needs no KFP. Pipelines are looked up by name in the `taskloom.pipelines` entry points; parameters arrive as strings
(from the CLI or an event) and are converted to the pipeline's declared types here, at the boundary.

    taskloom pipeline run train_merge_deploy -p max_steps=20 --root runs/kfp
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from taskloom.environment import apply_local_env
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


def submit(name: str, host: str, params: dict[str, Any], experiment: str = "taskloom") -> dict:
    """Start a run on a Kubeflow Pipelines cluster (its REST API at `host`) with kfp.Client."""
    fn = load_pipeline(name)
    kwargs = coerce_params(name, params)
    if not str(host).startswith(("http://", "https://")):
        raise UserError(f"--host {host!r}: expected a URL like http://ml-pipeline.kubeflow:8888")
    import warnings

    from kfp import Client

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client = Client(host=host)
    except Exception as e:  # connection refused, DNS, TLS: the cluster is not reachable from here
        raise UserError(f"--host {host}: cannot reach the Kubeflow Pipelines API ({type(e).__name__})") from None
    run = client.create_run_from_pipeline_func(
        fn, arguments=kwargs, experiment_name=experiment, run_name=f"{name}-{uuid.uuid4().hex[:8]}"
    )
    return {"pipeline": name, "run_id": run.run_id, "state": "SUBMITTED", "host": host, "experiment": experiment}
