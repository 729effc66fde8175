"""LoRA adapters served unmerged beside one copy of the base: each row of a batch uses its own adapter.

PEFT's own files are read (adapter_config.json + adapter_model.safetensors) and every adapted Linear
is wrapped once: y = W·x + b + Σ_adapters s·B·A·x over the rows routed to that adapter, with
s = lora_alpha / r (lora_alpha / √r for rsLoRA) as PEFT computes it. One forward pass then serves a
chunk mixing adapters. Written out rather than through PEFT so a serving process does not import
PEFT (seconds per model load: each hot swap pays it) and a forward pass registers no hooks.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from taskloom.errors import UserError

PREFIX = "base_model.model."


def check_config(cfg: dict, where: str) -> None:
    """Only plain LoRA on Linear layers is served; anything else is named and refused."""
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise UserError(f"{where}: peft_type {cfg.get('peft_type')!r}: only LoRA adapters are served")
    for key, ok in (("use_dora", False), ("fan_in_fan_out", False)):
        if bool(cfg.get(key)) != ok:
            raise UserError(f"{where}: {key}={cfg.get(key)!r} is not supported for serving")
    if cfg.get("bias", "none") != "none":
        raise UserError(f"{where}: bias={cfg['bias']!r}: only bias='none' adapters are served")
    if cfg.get("modules_to_save"):
        raise UserError(f"{where}: modules_to_save {cfg['modules_to_save']}: only LoRA factors are served")


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank/alpha patterns: the first key matching the end of the module's name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_lora(folder) -> dict[str, tuple]:
    """{module path: (A (r, in), B (out, r), scaling)} from a PEFT LoRA folder, float32 tensors."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    check_config(cfg, str(cfg_path))
    tensors = load_file(folder / "adapter_model.safetensors")
    factors: dict[str, dict] = {}
    for key, value in tensors.items():
        m = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if not m:
            raise UserError(f"{folder / 'adapter_model.safetensors'}: tensor {key!r} is not a LoRA factor of a Linear layer")
        factors.setdefault(m.group(1), {})[m.group(2)] = value.float()
    out = {}
    for module, ab in sorted(factors.items()):
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != ab["B"].shape[1]:
            raise UserError(f"{folder}: {module}: LoRA factors A/B missing or of different rank")
        r = ab["A"].shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
        scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[module] = (ab["A"].contiguous(), ab["B"].contiguous(), float(scaling))
    if not out:
        raise UserError(f"{folder / 'adapter_model.safetensors'}: no LoRA factors")
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
                raise UserError(f"{folder}: {module}: LoRA shapes {tuple(b.shape)}x{tuple(a.shape)} do not fit "
                                f"the base layer ({layer.base.out_features}x{layer.base.in_features})")
            layer.factors[name] = (a, b, s)
    return router
