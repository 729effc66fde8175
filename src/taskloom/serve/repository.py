"""Export a model folder as a Triton model repository served by the python backend.

Layout written (atomically: a staging folder renamed into place, so Triton never sees half a model):

    <repo>/<name>/config.pbtxt        backend python, dynamic batching, TEXT → EMBEDDING (+ LABEL, PROBS)
    <repo>/<name>/1/model.py          copy of serving/model.py (delegates to taskloom.serve.backend)
    <repo>/<name>/1/weights/          the Hugging Face folder (config, safetensors, tokenizer), each
                                      safetensors file with its .sha256 beside it
    <repo>/<name>/1/head/             head.safetensors + head.json, when a classification head is served
    <repo>/<name>/1/manifest.json     source, head, labels and the sha256 of every file served

    python -c "from taskloom.serve.repository import build_repository as b; print(b('minilm', 'repo'))"
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from taskloom.artifacts import publish_dir, sha256_file, staging_dir, write_digest, write_json, write_text
from taskloom.errors import UserError

SERVING_MODEL_PY = Path(__file__).resolve().parents[3] / "serving" / "model.py"
NOT_SERVED = (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".sha256")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
VERSION = "1"


def model_py_source() -> str:
    """The Triton model.py from serving/ (it ships with the source tree and the serving image)."""
    if not SERVING_MODEL_PY.exists():
        raise UserError(f"{SERVING_MODEL_PY}: missing (the Triton model.py ships in serving/)")
    return SERVING_MODEL_PY.read_text()


def resolve_model_dir(model_dir) -> Path:
    """A catalog name ("minilm") or a model folder with config.json and safetensors weights."""
    from taskloom.models.encoder import model_dir_has_weights
    from taskloom.models.registry import CATALOG, resolve_base

    key = str(model_dir)
    path = Path(key).expanduser()
    if key not in CATALOG and not path.exists():
        raise UserError(f"{key}: no such model folder (or catalog name: {', '.join(sorted(CATALOG))})")
    path = resolve_base(key)
    if not model_dir_has_weights(path):
        raise UserError(f"{path}: no safetensors weights (model.safetensors) in the model folder")
    return path


def hidden_size(model_path: Path) -> int:
    cfg = json.loads((model_path / "config.json").read_text())
    for key in ("hidden_size", "d_model", "dim", "n_embd"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    raise UserError(f"{model_path / 'config.json'}: no hidden_size, cannot size the EMBEDDING output")


def available_heads(model_path: Path) -> list[str]:
    heads = model_path / "heads"
    return sorted(p.name for p in heads.iterdir() if (p / "head.safetensors").exists()) if heads.is_dir() else []


def config_pbtxt(
    name: str,
    dim: int,
    labels: list[str] | None,
    max_batch_size: int,
    parameters: dict[str, str],
    instances: int = 1,
    max_queue_delay_us: int = 0,
) -> str:
    """Triton's model configuration, in protobuf text format."""
    outputs = [("EMBEDDING", "TYPE_FP32", dim)]
    if labels:
        outputs += [("LABEL", "TYPE_STRING", 1), ("PROBS", "TYPE_FP32", len(labels))]
    out_txt = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: [ {d} ] }}' for n, t, d in outputs)
    param_txt = "\n".join(
        f'parameters: {{ key: "{k}" value: {{ string_value: {json.dumps(str(v))} }} }}' for k, v in parameters.items()
    )
    return (
        f'name: "{name}"\n'
        'backend: "python"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}\n"
        'input [\n  { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }\n]\n'
        f"output [\n{out_txt}\n]\n"
        f"instance_group [ {{ kind: KIND_CPU count: {instances} }} ]\n"
        f"{param_txt}\n"
    )


def build_repository(
    model_dir,
    repo_dir,
    name: str = "taskloom",
    head_task: str | None = None,
    max_batch_size: int = 64,
    *,
    instances: int = 1,
    max_queue_delay_us: int = 0,
    max_length: int = 128,
) -> Path:
    """Write <repo_dir>/<name>/ for Triton (replacing an older one whole); returns repo_dir.

    model_dir: a catalog name or a (merged) model folder; head_task picks model_dir/heads/<task>/.
    """
    from taskloom.train.heads import has_head, load_head

    if not NAME_RE.match(name):
        raise UserError(f"model name {name!r}: use letters, digits, '_', '-', '.' (at most 64)")
    if not 1 <= max_batch_size <= 4096:
        raise UserError(f"max_batch_size {max_batch_size}: must be between 1 and 4096")
    if instances < 1:
        raise UserError(f"instances {instances}: must be at least 1")
    src = resolve_model_dir(model_dir)
    dim = hidden_size(src)
    labels = None
    if head_task is not None:
        head_src = src / "heads" / head_task
        if not has_head(head_src):
            have = available_heads(src)
            raise UserError(f"{head_src}: no classification head (heads in this model: {have or 'none'})")
        head, labels = load_head(head_src)
        if head.in_features != dim:
            raise UserError(f"{head_src}/head.safetensors: head expects {head.in_features} inputs, model gives {dim}")
    repo_dir = Path(repo_dir)
    final = repo_dir / name
    stage = staging_dir(final)
    try:
        version = stage / VERSION
        weights = version / "weights"
        weights.mkdir(parents=True)
        for f in sorted(src.iterdir()):
            if f.is_file() and not f.name.startswith(".") and not f.name.endswith(NOT_SERVED):
                shutil.copyfile(f, weights / f.name)
                if f.name.endswith(".safetensors"):
                    write_digest(weights / f.name)
        if labels is not None:
            (version / "head").mkdir()
            for f in ("head.safetensors", "head.json"):
                shutil.copyfile(head_src / f, version / "head" / f)
            write_digest(version / "head" / "head.safetensors")
        write_text(version / "model.py", model_py_source(), digest=False)
        files = {
            str(p.relative_to(version)): sha256_file(p)
            for p in sorted(version.rglob("*"))
            if p.is_file() and not p.name.endswith(".sha256")
        }
        revision = sha256_file_list(files)
        write_json(
            version / "manifest.json",
            {"name": name, "source": str(src), "head_task": head_task, "labels": labels, "dim": dim,
             "revision": revision, "files": files},
        )
        params = {"weights": "weights", "head": "head" if labels else "", "max_length": str(max_length),
                  "revision": revision}
        write_text(stage / "config.pbtxt",
                   config_pbtxt(name, dim, labels, max_batch_size, params, instances, max_queue_delay_us),
                   digest=False)
        publish_dir(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return repo_dir


def sha256_file_list(files: dict[str, str]) -> str:
    """One digest over every served file: changes whenever any file does (forces a Triton reload)."""
    import hashlib

    return hashlib.sha256("".join(f"{k}:{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()[:16]


def is_repository(path: Path) -> bool:
    """A folder holding at least one <model>/config.pbtxt."""
    return path.is_dir() and any(path.glob("*/config.pbtxt"))
