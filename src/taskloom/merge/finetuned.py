"""A fully fine-tuned model folder as a task vector: Δ = W − W₀ for every floating tensor of the base.

The folder must be the same architecture as the base (config model_type and sizes) with the same
tensor shapes. Tensors the model lacks (e.g. tied weights a saver dropped) count as unchanged;
tensors the base lacks (a task head) are ignored and listed in the report.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from taskloom.errors import UserError
from taskloom.jsonfiles import read_json
from taskloom.merge.weights import KeyMatcher, ModelWeights, is_float, weight_files

_ARCH_FIELDS = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")


class FineTunedModel:
    """One full model folder; `delta` reads one tensor when asked."""

    kind = "full"

    # set by taskloom.merge.merger._open_input: how the base was checked, the task and type it was trained for
    base_check: str
    task: str | None
    task_type: str | None

    def __init__(self, folder: Path, base_dir: Path, base: ModelWeights, stack: ExitStack, label: str):
        self.folder, self.label = folder, label
        files = weight_files(folder)
        if not files:
            raise UserError(f"{label}: no adapter_config.json and no *.safetensors weights in {folder}")
        cfg, base_cfg = read_json(folder / "config.json", label), read_json(base_dir / "config.json", "base model")
        for field in _ARCH_FIELDS:
            if field in base_cfg and cfg.get(field) != base_cfg[field]:
                raise UserError(
                    f"{label}: config.json {field}={cfg.get(field)!r} but the base has {base_cfg[field]!r}: "
                    "a model of another base cannot be merged"
                )
        self.config = cfg
        self.weights = ModelWeights(files, stack, label)
        mine = KeyMatcher(self.weights.keys())
        self.source: dict[str, str] = {}  # base key -> key in this model
        self.missing: list[str] = []
        for base_key in base.keys():
            if not is_float(base.dtype(base_key)):
                continue
            key = mine.find(base_key)
            if key is None:
                self.missing.append(base_key)
                continue
            if self.weights.shape(key) != base.shape(base_key):
                raise UserError(
                    f"{label}: {key} has shape {self.weights.shape(key)}, the base's {base_key} has {base.shape(base_key)}"
                )
            self.source[base_key] = key
        used = set(self.source.values())
        self.ignored = [k for k in self.weights.keys() if k not in used and is_float(self.weights.dtype(k))]
        if not self.source:
            raise UserError(f"{label}: none of its tensors match the base model's tensor names")
        self._keys = frozenset(self.source)

    def keys(self) -> frozenset[str]:
        return self._keys

    def rank(self, base_key: str) -> int:
        return 0

    def delta(self, base_key: str, w0):
        key = self.source.get(base_key)
        if key is None:
            return None
        return self.weights.get(key).float() - w0.float()

    def delta_rows(self, base_key: str, w0_rows, start: int, stop: int):
        """Rows start:stop of `delta(base_key, W₀)`, read alone (`w0_rows` = W₀[start:stop])."""
        key = self.source.get(base_key)
        if key is None:
            return None
        return self.weights.get_rows(key, start, stop).float() - w0_rows.float()

    def describe(self) -> dict:
        return {"kind": self.kind, "missing_tensors": self.missing, "ignored_tensors": self.ignored}
