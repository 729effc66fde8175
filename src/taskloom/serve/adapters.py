"""LoRA adapters as taskloom serves them: a PEFT folder (+ optional head), checked before it is published.

An adapter is served only with the sha256 its trainer wrote beside `adapter_model.safetensors` (and
beside `head.safetensors` when it has a head): a missing or mismatching digest is refused here, before
anything reaches the model repository, so the running version keeps serving.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from taskloom.artifacts import verify_digest
from taskloom.errors import UserError
from taskloom.jsonfiles import read_json
from taskloom.models.encoder import hidden_size
from taskloom.models.heads import load_head
from taskloom.models.registry import CATALOG, resolve_base
from taskloom.serve.lora import read_servable_config

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")  # \Z: `$` would let a trailing newline through
BASE = "__base__"  # what PEFT calls "no adapter" in a mixed batch; not a valid adapter name
SERVED_FILES = ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "head.json", "task.json")


def check_name(name: str, what: str = "adapter name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name == BASE:
        raise UserError(f"{what} {name!r}: use letters, digits, '_', '-', '.' (at most 64, not {BASE!r})")
    return name


def default_name(path: Path) -> str:
    """task.json's task, else the folder's name (its parent's when the folder is called `adapter`)."""
    task = path / "task.json"
    if task.exists():
        try:
            name = json.loads(task.read_text()).get("task")
        except (OSError, ValueError):
            name = None
        if isinstance(name, str) and NAME_RE.match(name):
            return name
    return path.parent.name if path.name == "adapter" else path.name


def _check_base(path: Path, dim: int) -> None:
    """Refuse an adapter whose task.json `base` or adapter_config.json `base_model_name_or_path` names a
    model this encoder (embedding width `dim`) cannot be: a causal LM of the catalog, or a model folder of
    another width. A base that cannot be identified here is left to the tensor shapes."""
    for file, key in (("task.json", "base"), ("adapter_config.json", "base_model_name_or_path")):
        f = path / file
        if not f.exists():
            continue
        base = read_json(f).get(key)
        if not isinstance(base, str) or not base:
            continue
        if base in CATALOG:
            if CATALOG[base].kind != "encoder":
                raise UserError(
                    f"{f}: {key} {base!r} is a {CATALOG[base].kind}: an adapter for another base, not this encoder"
                )
            width = hidden_size(resolve_base(base))
        else:
            try:
                found = (Path(base) / "config.json").is_file()
            except (OSError, ValueError):
                found = False
            if not found:
                continue
            try:
                width = hidden_size(Path(base))
            except (OSError, ValueError, UserError):  # an unreadable config names no width: the shapes decide
                continue
        if width != dim:
            raise UserError(f"{f}: {key} {base!r} is {width} wide, the served model {dim}: an adapter for another base")


def check_adapter(path, name: str | None = None, dim: int | None = None) -> dict:
    """Validate one adapter folder; returns {"name", "path", "labels", "task", "rank"}. Never writes."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such adapter folder")
    cfg = read_servable_config(path)
    weights = path / "adapter_model.safetensors"
    for f in (weights, path / "head.safetensors"):
        if not f.exists():
            continue
        if not f.with_name(f.name + ".sha256").exists():
            raise UserError(f"{f}: no {f.name}.sha256 beside it: adapters are served only with their digest")
        if not verify_digest(f):
            raise UserError(f"{f}: sha256 does not match {f.name}.sha256 (corrupted or replaced file): refused")
    if dim is not None:
        _check_base(path, dim)
    labels = None
    if (path / "head.safetensors").exists() or (path / "head.json").exists():
        head, labels = load_head(path)
        if dim is not None and head.in_features != dim:
            raise UserError(f"{path}/head.safetensors: head expects {head.in_features} inputs, the model gives {dim}")
    name = check_name(name if name is not None else default_name(path))
    task = None
    if (path / "task.json").exists():
        try:
            task = json.loads((path / "task.json").read_text()).get("task")
        except ValueError as e:
            raise UserError(f"{path / 'task.json'}: not valid JSON ({e})") from None
    return {"name": name, "path": str(path.resolve()), "labels": labels, "task": task, "rank": cfg.get("r")}
