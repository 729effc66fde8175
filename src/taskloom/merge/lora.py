"""A PEFT LoRA adapter read as task vectors: Δ = s·B·A for each targeted base tensor, exactly.

The folder, its config and its tensor names are read by `taskloom.models.adapter` (the same reader
serving uses); the base tensor of a factor is `<module>.weight`. Embeddings store A (r × vocab) and
B (dim × r), and Δ = (B·A)ᵀ; `fan_in_fan_out` layers (GPT-2 Conv1D) also take the transpose;
`lora_bias` adds s·b to the base bias. Modules saved whole (`modules_to_save`) give Δ = W_saved − W₀.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from taskloom.errors import UserError
from taskloom.merge.weights import KeyMatcher, ModelWeights, all_finite
from taskloom.models.adapter import (
    ADAPTER_WEIGHTS,
    factor_scaling,
    read_config,
    split_keys,
)


@dataclass(frozen=True)
class Factor:
    """How one base tensor's Δ is built from the adapter file."""

    module: str
    kind: str  # "linear" | "embedding" | "bias"
    a_key: str | None
    b_key: str
    rank: int
    scaling: float
    transpose: bool


class LoraAdapter:
    """One PEFT adapter folder, checked against the base when opened; `delta` reads lazily."""

    kind = "lora"

    # set by taskloom.merge.merger._open_input: how the base was checked, the task and type it was trained for
    base_check: str
    task: str | None
    task_type: str | None

    def __init__(self, folder: Path, base: ModelWeights, matcher: KeyMatcher, stack: ExitStack, label: str):
        self.folder, self.label = folder, label
        self.config = cfg = read_config(folder, label)
        fan_in_fan_out = bool(cfg.get("fan_in_fan_out"))
        self.weights = ModelWeights([folder / ADAPTER_WEIGHTS], stack, label)

        for key in self.weights.keys():
            if not self.weights.dtype(key).startswith(("F", "BF")):
                continue
            if not all_finite(self.weights.get(key)):
                raise UserError(f"{label}: tensor {key} has NaN or infinite values")

        parts, plain = split_keys(self.weights.keys())
        self.replaced: dict[str, str] = {}  # base key -> adapter key of a module saved whole
        self.ignored: list[str] = []  # tensors with no counterpart in the base (e.g. a task head)
        for name, key in plain.items():
            base_key = matcher.find(name)
            if base_key is None:
                self.ignored.append(key)
                continue
            if tuple(self.weights.shape(key)) != base.shape(base_key):
                raise UserError(
                    f"{label}: {key} has shape {self.weights.shape(key)}, the base's {base_key} has "
                    f"{base.shape(base_key)}: adapter made for a different base model?"
                )
            self.replaced[base_key] = key

        self.targets: dict[str, Factor] = {}
        for module, p in parts.items():
            if "lora_magnitude_vector" in p:
                raise UserError(f"{label}: {module}: DoRA magnitude vectors cannot be merged additively")
            embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
            a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
            if a_name not in p or b_name not in p:
                missing = b_name if a_name in p else a_name
                raise UserError(f"{label}: {ADAPTER_WEIGHTS} has no {missing} for module {module}")
            base_key = matcher.find(module + ".weight")
            if base_key is None:
                raise UserError(f"{label}: module {module} is not in the base model: adapter made for another base?")
            a_shape, b_shape = self.weights.shape(p[a_name]), self.weights.shape(p[b_name])
            rank, s = factor_scaling(cfg, module, a_shape, b_shape, label)
            transpose = embedding or fan_in_fan_out
            delta_shape = (a_shape[1], b_shape[0]) if transpose else (b_shape[0], a_shape[1])
            if delta_shape != base.shape(base_key):
                raise UserError(
                    f"{label}: {module}: LoRA Δ has shape {delta_shape}, the base's {base_key} has "
                    f"{base.shape(base_key)}: adapter made for a different base model?"
                )
            kind = "embedding" if embedding else "linear"
            self.targets[base_key] = Factor(module, kind, p[a_name], p[b_name], rank, s, transpose)
            if b_name + ".bias" in p:
                bias_key = matcher.find(module + ".bias")
                if bias_key is None:
                    raise UserError(f"{label}: {module}: lora_bias given but the base layer has no bias")
                self.targets[bias_key] = Factor(module, "bias", None, p[b_name + ".bias"], rank, s, False)

        if not self.targets and not self.replaced:
            raise UserError(f"{label}: {ADAPTER_WEIGHTS} holds no LoRA tensors for this base model")
        self._keys = frozenset(self.targets) | frozenset(self.replaced)

    def keys(self) -> frozenset[str]:
        """Base tensors this adapter changes."""
        return self._keys

    def rank(self, base_key: str) -> int:
        f = self.targets.get(base_key)
        return f.rank if f is not None and f.kind != "bias" else 0

    def delta(self, base_key: str, w0):
        """Δ for one base tensor, float32, in the base's layout; None when this adapter leaves it alone."""
        f = self.targets.get(base_key)
        if f is not None:
            b = self.weights.get(f.b_key).float()
            if f.kind == "bias":
                return b * f.scaling
            assert f.a_key is not None  # every kind but "bias" has an A factor
            d = (b @ self.weights.get(f.a_key).float()) * f.scaling
            return d.T.contiguous() if f.transpose else d
        key = self.replaced.get(base_key)
        if key is not None:
            return self.weights.get(key).float() - w0.float()
        return None

    def delta_rows(self, base_key: str, w0_rows, start: int, stop: int):
        """Rows start:stop of `delta(base_key, W₀)`, computed from those rows alone (`w0_rows` = W₀[start:stop])."""
        f = self.targets.get(base_key)
        if f is not None:
            b = self.weights.get(f.b_key).float()
            if f.kind == "bias":
                return b[start:stop] * f.scaling
            assert f.a_key is not None  # every kind but "bias" has an A factor
            a = self.weights.get(f.a_key).float()
            if f.transpose:  # rows of (B·A)ᵀ are columns of B·A
                return ((b @ a[:, start:stop]) * f.scaling).T.contiguous()
            return (b[start:stop] @ a) * f.scaling
        key = self.replaced.get(base_key)
        if key is not None:
            return self.weights.get_rows(key, start, stop).float() - w0_rows.float()
        return None

    def describe(self) -> dict:
        cfg = self.config
        return {
            "kind": self.kind,
            "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "use_rslora": bool(cfg.get("use_rslora")),
            "target_modules": sorted({f.module for f in self.targets.values()}),
            "saved_whole": sorted(self.replaced),
            "ignored_tensors": self.ignored,
        }
