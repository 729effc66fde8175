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
from taskloom.models.registry import CATALOG, resolve_base


def read_json(path: Path, label: str) -> dict:
    """A JSON object from `path`, or UserError naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: not valid JSON ({e.__class__.__name__}) in {label}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a JSON object in {label}")
    return doc


def recorded_base(folder: Path, adapter_config: dict | None) -> str | None:
    """The base an input says it was trained on, or None when it does not say."""
    task_json = folder / "task.json"
    if task_json.exists():
        base = read_json(task_json, str(folder)).get("base")
        if base:
            return str(base)
    if adapter_config:
        base = adapter_config.get("base_model_name_or_path")
        if base:
            return str(base)
    return None


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
    from taskloom.merge.weights import weight_files

    def config(p: Path) -> dict:
        try:
            doc = json.loads((p / "config.json").read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in doc.items() if k not in ("_name_or_path", "transformers_version", "dtype", "torch_dtype")}

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
