"""Which base model an input was trained on, and whether that is the merge's base.

A task vector only means something on the base it was trained from: adding a MiniLM adapter's Δ to
another encoder of the same shapes runs without error and gives garbage. So the recorded base
(task.json `base`, else adapter_config `base_model_name_or_path`) is compared with the merge's base;
tensor shapes are checked separately, always.
"""

from __future__ import annotations

import json
from pathlib import Path

from taskloom.artifacts import sha256_file
from taskloom.errors import UserError
from taskloom.jsonfiles import read_json
from taskloom.merge.weights import weight_files
from taskloom.models.registry import CATALOG, resolve_base


def recorded_base(folder: Path, label: str | None = None) -> str | None:
    """The base an input says it was trained on (task.json `base`, else adapter_config.json
    `base_model_name_or_path`), or None when it does not say. `label` names the input in errors."""
    folder = Path(folder)
    for name, key in (("task.json", "base"), ("adapter_config.json", "base_model_name_or_path")):
        if (folder / name).exists():
            base = read_json(folder / name, label or str(folder)).get(key)
            if base:
                return str(base)
    return None


def trained_base(folder: Path) -> str:
    """The base an adapter was trained on; a UserError when it does not say (guessing one would
    merge or serve it on the wrong model without a word)."""
    base = recorded_base(folder)
    if base is None:
        raise UserError(
            f"{folder}: no recorded base model (neither task.json 'base' nor "
            "adapter_config.json 'base_model_name_or_path')"
        )
    return base


def _catalog_name(ref: str) -> str | None:
    """A catalog name for `ref`: the name itself, or a path ending in the catalog package's folder
    (the same model installed under another prefix, e.g. trained in a cluster image)."""
    if ref in CATALOG:
        return ref
    tail = ref.replace("\\", "/").rstrip("/")
    for name, entry in CATALOG.items():
        if tail.endswith(f"{entry.package}/{entry.subdir}"):
            return name
    return None


def _same_weights(a: Path, b: Path) -> bool:
    """Two model folders hold the same model: same config (but its name) and identical weight files."""

    def config(p: Path) -> dict:
        try:
            doc = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            return {}
        return {
            k: v for k, v in doc.items() if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype")
        }

    if config(a) != config(b):
        return False
    fa, fb = weight_files(a), weight_files(b)
    if [f.name for f in fa] != [f.name for f in fb] or [f.stat().st_size for f in fa] != [f.stat().st_size for f in fb]:
        return False
    return all(sha256_file(x) == sha256_file(y) for x, y in zip(fa, fb))


def same_base(recorded: str | None, base_dir: Path) -> bool | None:
    """True/False when the recorded base can be identified on this machine, None when it cannot
    (then only the tensor shapes vouch for it)."""
    if not recorded:
        return None
    name = _catalog_name(recorded)
    if name is not None:
        try:
            other = resolve_base(name)
        except UserError:
            return None
    else:
        other = Path(recorded).expanduser()
        if not (other / "config.json").exists():
            return None
    other = other.resolve()
    return other == base_dir.resolve() or _same_weights(other, base_dir)


def check_base(recorded: str | None, base_name: str, base_dir: Path, label: str) -> str:
    """Refuse an input recorded for another base; returns how the base was checked (for the report)."""
    verdict = same_base(recorded, base_dir)
    if verdict is False:
        raise UserError(f"{label}: trained on base model {recorded!r}, not on {base_name!r} (base_model of the merge)")
    return "recorded base matches" if verdict else "tensor shapes only (recorded base not found here)"
