"""Real PEFT adapters on MiniLM for the merge tests, and the independent dense formula they are
checked against (float64, written here from the LoRA definition, sharing no code with taskloom.merge)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from taskloom.models.registry import resolve_base

PREFIX = "base_model.model."


def base_state() -> dict[str, np.ndarray]:
    return load_file(str(resolve_base("minilm") / "model.safetensors"))


def make_adapter(
    folder: Path,
    seed: int,
    *,
    r: int = 4,
    alpha: float = 8,
    targets=("query", "value"),
    task: str | None = None,
    head_labels: list[str] | None = None,
    **lora_kwargs,
) -> Path:
    """Save a PEFT LoRA adapter trained on nothing but with random non-zero A and B (so Δ ≠ 0)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(resolve_base("minilm"))
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), **lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.05)
            elif "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.01)
    peft_model.save_pretrained(folder)
    if task:
        (folder / "task.json").write_text(json.dumps({"task": task, "type": "classification", "base": "minilm"}))
    if head_labels:
        from safetensors.torch import save_file

        save_file({"weight": torch.randn(len(head_labels), 384), "bias": torch.zeros(len(head_labels))},
                  str(folder / "head.safetensors"))
        (folder / "head.json").write_text(json.dumps({"labels": head_labels}))
    return folder


def lora_deltas(folder: Path) -> dict[str, np.ndarray]:
    """{base key: s·B·A} in float64 for a plain LoRA adapter (query/value/dense linear layers)."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    t = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key in t:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PREFIX) : -len(".lora_A.weight")]
        a = t[key].astype(np.float64)
        b = t[f"{PREFIX}{module}.lora_B.weight"].astype(np.float64)
        r = a.shape[0]
        s = cfg["lora_alpha"] / (math.sqrt(r) if cfg.get("use_rslora") else r)
        out[f"{module}.weight"] = s * (b @ a)
    return out


def dense_merge(base: dict, adapters: list[Path], weights: list[float], *, method: str, lam: float = 1.0) -> dict:
    """W₀ + λ·Σ wᵢΔᵢ (task_arithmetic) or W₀ + Σ wᵢΔᵢ / Σ wᵢ (linear), float64."""
    total = {}
    for folder, w in zip(adapters, weights):
        for key, d in lora_deltas(folder).items():
            total[key] = total.get(key, 0.0) + w * d
    scale = lam if method == "task_arithmetic" else 1.0 / sum(weights)
    return {k: (v.astype(np.float64) + scale * total[k]) if k in total else v for k, v in base.items()}


def write_merge_yaml(path: Path, method: str, adapters: list[tuple[Path, float]], **extra) -> Path:
    import yaml

    doc = {"method": method, "base_model": "minilm", "adapters": [{"path": str(p), "weight": w} for p, w in adapters]}
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc))
    return path
