"""LoRA adapters served unmerged beside one copy of the base: each row of a batch uses its own adapter.

PEFT's own files are read by `taskloom.models.adapter` (the same reader the merge uses) and every
adapted Linear is wrapped once: y = W·x + b + Σ_adapters s·B·A·x over the rows routed to that
adapter, with s as PEFT computes it. One forward pass then serves a
chunk mixing adapters. Written out rather than through PEFT so a serving process does not import
PEFT (seconds per model load: each hot swap pays it) and a forward pass registers no hooks.
"""

from __future__ import annotations

from pathlib import Path

from taskloom.errors import UserError
from taskloom.models.adapter import (
    ADAPTER_WEIGHTS,
    factor_scaling,
    read_config,
    split_keys,
)
from taskloom.models.heads import read_tensors


def read_servable_config(folder, label: str | None = None) -> dict:
    """The adapter's config (`models.adapter.read_config`), and only plain LoRA on Linear layers:
    what the wrappers below compute. Anything else is named and refused."""
    cfg = read_config(folder, label)
    where = label or str(Path(folder) / "adapter_config.json")
    if cfg.get("fan_in_fan_out"):
        raise UserError(f"{where}: fan_in_fan_out={cfg.get('fan_in_fan_out')!r} is not supported for serving")
    if cfg.get("bias", "none") != "none":
        raise UserError(f"{where}: bias={cfg['bias']!r}: only bias='none' adapters are served")
    if cfg.get("modules_to_save"):
        raise UserError(f"{where}: modules_to_save {cfg['modules_to_save']}: only LoRA factors are served")
    return cfg


def read_lora(folder) -> dict[str, tuple]:
    """{module path: (A (r, in), B (out, r), scaling)} from a PEFT LoRA folder, float32 tensors."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_servable_config(folder)
    weights = folder / ADAPTER_WEIGHTS
    tensors = read_tensors(weights, load_file)
    parts, plain = split_keys(tensors)
    if plain:
        raise UserError(f"{weights}: tensor {next(iter(plain.values()))!r} is not a LoRA factor of a Linear layer")
    out = {}
    for module, p in sorted(parts.items()):
        if set(p) != {"lora_A", "lora_B"}:
            odd = sorted(set(p) - {"lora_A", "lora_B"})
            what = (
                f"tensor {p[odd[0]]!r} is not a LoRA factor of a Linear layer" if odd else "LoRA factor A or B missing"
            )
            raise UserError(f"{weights}: {module}: {what}")
        a, b = tensors[p["lora_A"]].float(), tensors[p["lora_B"]].float()
        _rank, scaling = factor_scaling(cfg, module, a.shape, b.shape, str(folder))
        out[module] = (a.contiguous(), b.contiguous(), float(scaling))
    if not out:
        raise UserError(f"{weights}: no LoRA factors")
    return out


class Router:
    """Which rows of the current chunk go to which adapter: [(name, row indices or None = all rows)]."""

    def __init__(self):
        self.groups: list = []


def attach(model, adapters: dict) -> Router:
    """Wrap every Linear that some adapter adapts; returns the Router the wrappers read per forward."""
    import torch

    class LoraLinear(torch.nn.Module):
        def __init__(self, base, router: Router):
            super().__init__()
            self.base = base
            self.router = router
            self.factors: dict[str, tuple] = {}

        def forward(self, x):
            out = self.base(x)
            for name, rows in self.router.groups:
                f = self.factors.get(name)
                if f is None:
                    continue
                a, b, s = f
                if rows is None:
                    out = out + (x @ a.T) @ b.T * s
                else:
                    out = out.index_add(0, rows, ((x[rows] @ a.T) @ b.T * s).to(out.dtype))
            return out

    router = Router()
    for name, folder in adapters.items():
        for module, (a, b, s) in read_lora(folder).items():
            try:
                layer = model.get_submodule(module)
            except AttributeError:
                raise UserError(f"{folder}: adapts {module!r}, which the base model does not have") from None
            if not isinstance(layer, LoraLinear):
                if not isinstance(layer, torch.nn.Linear):
                    raise UserError(f"{folder}: {module!r} is a {type(layer).__name__}, not a Linear layer")
                parent, _, child = module.rpartition(".")
                wrapped = LoraLinear(layer, router)
                setattr(model.get_submodule(parent) if parent else model, child, wrapped)
                layer = wrapped
            if a.shape[1] != layer.base.in_features or b.shape[0] != layer.base.out_features:
                raise UserError(
                    f"{folder}: {module}: LoRA shapes {tuple(b.shape)}x{tuple(a.shape)} do not fit "
                    f"the base layer ({layer.base.out_features}x{layer.base.in_features})"
                )
            layer.factors[name] = (a, b, s)
    return router
