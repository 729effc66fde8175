"""Export a model folder (and LoRA adapters) as a Triton model repository served by the python backend.

Layout written (atomically: a staging folder renamed into place, so Triton never sees half a model):

    <repo>/<name>/config.pbtxt        backend python, dynamic batching, TEXT → EMBEDDING (+ LABEL, PROBS),
                                      version_policy naming the one version served
    <repo>/<name>/versions.json       every version on disk, which one serves, the deploy history
    <repo>/<name>/<v>/model.py        copy of taskloom/serve/triton/model.py (delegates to taskloom.serve.backend)
    <repo>/<name>/<v>/weights/        the Hugging Face folder (config, safetensors, tokenizer), each
                                      safetensors file with its .sha256 beside it
    <repo>/<name>/<v>/onnx/model.onnx the body as ONNX, when the version runs on ONNX Runtime (engine)
    <repo>/<name>/<v>/head/           head.safetensors + head.json, when the base's classification head is served
    <repo>/<name>/<v>/adapters/<a>/   each LoRA adapter (PEFT files + its head), selected per request
    <repo>/<name>/<v>/manifest.json   source, heads, adapters, serving options and the sha256 of every file

`build_repository` writes version 1; `taskloom.serve.deploy` adds versions beside it and switches the
served one through Triton's model-control API (old versions stay on disk for rollback).

    python -c "from taskloom.serve.repository import build_repository as b; print(b('minilm', 'repo'))"
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from taskloom.artifacts import (
    publish_dir,
    recorded_digest,
    staging_dir,
    verify_digest,
    write_digest,
    write_json,
    write_text,
)
from taskloom.errors import UserError
from taskloom.models.encoder import hidden_size, model_dir_has_weights
from taskloom.models.heads import has_head, load_head
from taskloom.models.registry import CATALOG, resolve_base
from taskloom.serve.adapters import NAME_RE, SERVED_FILES, check_adapter, check_name
from taskloom.serve.backend import ENGINES, ONNX_FILE, PRECISIONS, resolve_engine
from taskloom.serve.onnx_runtime import export_encoder

# Triton's python-backend model, package data (never imported here: it needs Triton's own module).
SERVING_MODEL_PY = Path(__file__).resolve().parent / "triton" / "model.py"
NOT_SERVED = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".sha256")
VERSION = "1"
VERSIONS_FILE = "versions.json"


def model_py_source() -> str:
    """The Triton model.py shipped with the package (taskloom/serve/triton/model.py)."""
    if not SERVING_MODEL_PY.exists():
        raise UserError(f"{SERVING_MODEL_PY}: missing from the taskloom installation")
    return SERVING_MODEL_PY.read_text()


def resolve_model_dir(model_dir) -> Path:
    """A catalog name ("minilm") or a model folder with config.json and safetensors weights."""
    key = str(model_dir)
    path = Path(key).expanduser()
    if key not in CATALOG and not path.exists():
        raise UserError(f"{key}: no such model folder (or catalog name: {', '.join(sorted(CATALOG))})")
    path = resolve_base(key)
    if not model_dir_has_weights(path):
        raise UserError(f"{path}: no safetensors weights (model.safetensors) in the model folder")
    return path


def available_heads(model_path: Path) -> list[str]:
    heads = model_path / "heads"
    return sorted(p.name for p in heads.iterdir() if (p / "head.safetensors").exists()) if heads.is_dir() else []


def serving_options(
    max_batch_size: int = 64,
    instances: int = 1,
    max_queue_delay_us: int = 0,
    max_length: int = 128,
    threads: int | None = None,
    precision: str = "fp32",
    engine: str = "auto",
) -> dict:
    """The knobs of one served version, checked in one place."""
    if not 1 <= int(max_batch_size) <= 4096:
        raise UserError(f"max_batch_size {max_batch_size}: must be between 1 and 4096")
    if int(instances) < 1:
        raise UserError(f"instances {instances}: must be at least 1")
    if not 0 <= int(max_queue_delay_us) <= 10_000_000:
        raise UserError(f"max_queue_delay_us {max_queue_delay_us}: must be between 0 and 10000000")
    if not 8 <= int(max_length) <= 8192:
        raise UserError(f"max_length {max_length}: must be between 8 and 8192 tokens")
    if threads is not None and not 1 <= int(threads) <= 256:
        raise UserError(f"threads {threads}: must be between 1 and 256")
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: use one of {list(PRECISIONS)}")
    if engine not in ENGINES:
        raise UserError(f"engine {engine!r}: use one of {list(ENGINES)}")
    return {
        "engine": engine,
        "max_batch_size": int(max_batch_size),
        "instances": int(instances),
        "max_queue_delay_us": int(max_queue_delay_us),
        "max_length": int(max_length),
        "threads": None if threads is None else int(threads),
        "precision": precision,
    }


def config_pbtxt(
    name: str,
    dim: int,
    labels: list[str] | None,
    max_batch_size: int,
    parameters: dict[str, str],
    instances: int = 1,
    max_queue_delay_us: int = 0,
    *,
    version: int | None = None,
    multi: bool = False,
) -> str:
    """Triton's model configuration, in protobuf text format.

    multi: the model serves adapters, whose heads differ: LABEL and PROBS are always declared and
    PROBS has a variable width (0 for a request whose adapter has no head).
    """
    outputs = [("EMBEDDING", "TYPE_FP32", dim)]
    if multi:
        outputs += [("LABEL", "TYPE_STRING", 1), ("PROBS", "TYPE_FP32", -1)]
    elif labels:
        outputs += [("LABEL", "TYPE_STRING", 1), ("PROBS", "TYPE_FP32", len(labels))]
    out_txt = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in outputs)
    param_txt = "\n".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: {json.dumps(str(v))} }} }}' for k, v in parameters.items()
    )
    policy = f"version_policy: {{ specific: {{ versions: [ {version} ] }} }}\n" if version is not None else ""
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"{policy}"
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
        'input [\n  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }\n]\n'
        f"output [\n{out_txt}\n]\n"
        f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
        f"{param_txt}\n"
    )


def config_for(manifest: dict, version: int, name: str | None = None) -> str:
    """config.pbtxt serving `version`, derived from that version's manifest (so a rollback is exact)."""
    opts = manifest.get("serving") or serving_options()  # exports older than serving options: the defaults
    params = {
        "weights": "weights",
        "head": "head" if manifest.get("labels") else "",
        "adapters": "adapters" if manifest.get("adapters") else "",
        "max_length": str(opts["max_length"]),
        "precision": opts["precision"],
        "engine": manifest.get("engine", "torch"),
        "revision": manifest["revision"],
    }
    if opts.get("threads"):
        params["threads"] = str(opts["threads"])
    return config_pbtxt(
        name or manifest["name"],
        manifest["dim"],
        manifest.get("labels"),
        opts["max_batch_size"],
        params,
        opts["instances"],
        opts["max_queue_delay_us"],
        version=version,
        multi=manifest.get("adapters") is not None,
    )


def _place(src: Path, dst: Path, link: bool) -> None:
    """Hard-link files of an older version of the same repository (never rewritten in place), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def _inside(path: Path, root: Path | None) -> bool:
    if root is None:
        return False
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def write_version(
    version_dir: Path,
    src: Path,
    *,
    name: str,
    version: int,
    head_dir: Path | None = None,
    head_task: str | None = None,
    adapters: dict[str, Path] | None = None,
    options: dict | None = None,
    repo_root: Path | None = None,
) -> dict:
    """Fill the empty folder `version_dir` with one servable version; returns its manifest.

    src: a model folder (config.json + safetensors); head_dir: a folder holding head.safetensors +
    head.json for the base; adapters: {name: adapter folder}, each checked (sha256 included) first.
    Files already inside `repo_root` (older versions) are hard-linked, not copied.
    """
    options = options or serving_options()
    dim = hidden_size(src)
    labels = None
    if head_dir is not None:
        if not has_head(head_dir):
            raise UserError(f"{head_dir}: no classification head (head.safetensors + head.json)")
        head, labels = load_head(head_dir)
        if head.in_features != dim:
            raise UserError(f"{head_dir}/head.safetensors: head expects {head.in_features} inputs, model gives {dim}")
    checked = {}
    for a_name, a_path in (adapters or {}).items():
        checked[check_name(a_name)] = check_adapter(a_path, name=a_name, dim=dim)
    engine = resolve_engine(options.get("engine", "auto"), options["precision"], adapters is not None)
    digests: dict[str, str] = {}
    weights = version_dir / "weights"
    weights.mkdir(parents=True)
    link = _inside(src, repo_root)
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith(".") and not f.name.endswith(NOT_SERVED):
            _place(f, weights / f.name, link)
            if f.name.endswith(".safetensors"):
                write_digest(weights / f.name)
    if head_dir is not None and labels is not None:
        for fname in ("head.safetensors", "head.json"):
            _place(head_dir / fname, version_dir / "head" / fname, _inside(head_dir, repo_root))
        write_digest(version_dir / "head" / "head.safetensors")
    for a_name, info in checked.items():
        a_src = Path(info["path"])
        for fname in SERVED_FILES:
            if (a_src / fname).exists():
                _place(a_src / fname, version_dir / "adapters" / a_name / fname, _inside(a_src, repo_root))
                if fname.endswith(".safetensors"):
                    write_digest(version_dir / "adapters" / a_name / fname)
    if engine == "onnxruntime":
        export_encoder(weights, version_dir / ONNX_FILE)
    write_text(version_dir / "model.py", model_py_source(), digest=False)
    for p in sorted(version_dir.rglob("*")):
        if p.is_file() and not p.name.endswith(".sha256"):
            digests[str(p.relative_to(version_dir))] = recorded_digest(p)
    manifest = {
        "name": name,
        "version": version,
        "source": str(src),
        "head_task": head_task,
        "labels": labels,
        "dim": dim,
        "adapters": None
        if adapters is None
        else {
            k: {"source": v["path"], "task": v["task"], "labels": v["labels"], "rank": v["rank"]}
            for k, v in checked.items()
        },
        "serving": options,
        "engine": engine,
        "revision": sha256_file_list(digests),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": digests,
    }
    write_json(version_dir / "manifest.json", manifest)
    return manifest


def read_manifest(version_dir: Path) -> dict:
    path = Path(version_dir) / "manifest.json"
    if not path.exists():
        raise UserError(f"{path}: missing (not a version written by taskloom)")
    if path.with_name("manifest.json.sha256").exists() and not verify_digest(path):
        raise UserError(f"{path}: sha256 does not match manifest.json.sha256 (corrupted or edited)")
    return json.loads(path.read_text())


def version_numbers(model_folder: Path) -> list[int]:
    """The numeric version folders on disk, ascending."""
    if not model_folder.is_dir():
        return []
    return sorted(int(p.name) for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit())


def build_repository(
    model_dir,
    repo_dir,
    name: str = "taskloom",
    head_task: str | None = None,
    max_batch_size: int = 64,
    *,
    adapters: dict | None = None,
    instances: int = 1,
    max_queue_delay_us: int = 0,
    max_length: int = 128,
    threads: int | None = None,
    precision: str = "fp32",
    engine: str = "auto",
) -> Path:
    """Write <repo_dir>/<name>/ for Triton (version 1, replacing an older export whole); returns repo_dir.

    model_dir: a catalog name or a (merged) model folder; head_task picks model_dir/heads/<task>/.
    adapters: {name: adapter folder}: one model serves the base and every adapter, chosen per request
    by the `adapter` request parameter (none = the base). engine: auto (ONNX Runtime for one fp32 model
    without adapters, else PyTorch), torch or onnxruntime. A folder that already holds deployed
    versions is refused: `taskloom deploy` adds versions without losing any.
    """
    if not NAME_RE.match(name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '-', '.' (at most 64)")
    options = serving_options(max_batch_size, instances, max_queue_delay_us, max_length, threads, precision, engine)
    src = resolve_model_dir(model_dir)
    head_dir = None
    if head_task is not None:
        head_dir = src / "heads" / head_task
        if not (head_dir / "head.safetensors").exists():
            have = available_heads(src)
            raise UserError(f"{head_dir}: no classification head (heads in this model: {have or 'none'})")
    if adapters is not None and not isinstance(adapters, dict):
        raise UserError("adapters: expected {name: adapter folder}")
    repo_dir = Path(repo_dir)
    final = repo_dir / name
    deployed = [v for v in version_numbers(final) if v != 1]
    if deployed:
        raise UserError(
            f"{final}: holds deployed versions {deployed}; publish with `taskloom deploy` "
            "(or remove the folder to export afresh)"
        )
    stage = staging_dir(final)
    try:
        manifest = write_version(
            stage / VERSION,
            src,
            name=name,
            version=1,
            head_dir=head_dir,
            head_task=head_task,
            adapters=None if adapters is None else {k: Path(v) for k, v in adapters.items()},
            options=options,
        )
        write_text(stage / "config.pbtxt", config_for(manifest, 1), digest=False)
        write_json(
            stage / VERSIONS_FILE,
            {
                "name": name,
                "serving": 1,
                "versions": {"1": version_record(manifest, "serving")},
                "history": [{"ts": manifest["created"], "action": "build", "version": 1, "result": "serving"}],
            },
        )
        publish_dir(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return repo_dir


def version_record(manifest: dict, status: str, reason: str | None = None) -> dict:
    rec = {
        "status": status,
        "created": manifest["created"],
        "source": manifest["source"],
        "head_task": manifest.get("head_task"),
        "revision": manifest["revision"],
        "adapters": sorted(manifest["adapters"]) if manifest.get("adapters") is not None else None,
    }
    if reason:
        rec["reason"] = reason
    return rec


def sha256_file_list(files: dict[str, str]) -> str:
    """One digest over every served file: changes whenever any file does (forces a Triton reload)."""
    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()[:16]


def is_repository(path: Path) -> bool:
    """A folder holding at least one <model>/config.pbtxt."""
    return path.is_dir() and any(path.glob("*/config.pbtxt"))
