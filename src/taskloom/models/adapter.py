"""A PEFT LoRA adapter folder, read one way for merging and for serving.

PEFT saves `adapter_config.json` and `adapter_model.safetensors` (read as safetensors only, never a
pickle). Its factors are `base_model.model.<module>.lora_A.weight` (r × in) and `.lora_B.weight`
(out × r), Δ = s·B·A with s = lora_alpha / r (lora_alpha / √r with rsLoRA), per module through
`rank_pattern` / `alpha_pattern`. Embeddings use `lora_embedding_A/B`; `lora_bias` adds a bias to B.
The config rules, the tensor names and the rank checks live here once; the merge reads the
tensors lazily (merge/lora.py), serving loads them whole (serve/lora.py).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from taskloom.errors import UserError
from taskloom.jsonfiles import read_json

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<part>lora_embedding_A|lora_embedding_B|lora_A|lora_B|lora_magnitude_vector)(?P<rest>(?:\.[^.]+)*)$"
)
# LoRA variants whose effect is not a fixed additive Δ on the base weights: refused, never used wrongly.
_NOT_ADDITIVE = {
    "use_dora": "DoRA (weight-decomposed LoRA)",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "layer_replication": "layer replication",
    "trainable_token_indices": "trainable tokens",
    "use_bdlora": "block-diagonal LoRA",
    "use_qalora": "QA-LoRA",
}


def read_config(folder: Path, label: str | None = None) -> dict:
    """The adapter's config, checked: both files present, plain additive LoRA, numeric r and lora_alpha.

    `label` names the input in errors (default: the folder)."""
    folder = Path(folder)
    where = f"{label}: {folder}" if label else str(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).exists():
            raise UserError(f"{where}: not a LoRA adapter folder: missing {name}")
    cfg = read_json(folder / ADAPTER_CONFIG, label or str(folder))
    where = label or str(folder / ADAPTER_CONFIG)
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise UserError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for field, what in _NOT_ADDITIVE.items():
        if cfg.get(field):
            raise UserError(f"{where}: {field}: {what} adapters are not additive and cannot be merged or served")
    try:
        int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    except (TypeError, ValueError):
        raise UserError(f"{where}: {ADAPTER_CONFIG}: r and lora_alpha must be numbers") from None
    return cfg


def split_keys(keys) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """The adapter's tensor names → ({module: {part: key}}, {name: key} of the tensors that are not LoRA
    factors: modules saved whole, a task head). Parts are lora_A, lora_B, lora_embedding_A/B,
    lora_magnitude_vector, and `<part>.bias` for a lora_bias."""
    parts: dict[str, dict[str, str]] = {}
    plain: dict[str, str] = {}
    for key in keys:
        name = re.sub(r"\.modules_to_save\.[^.]+", "", key.removeprefix(PREFIX))
        m = _LORA_KEY.match(name)
        if m is None:
            plain[name] = key
            continue
        part = m["part"] + (".bias" if m["rest"].split(".")[-1] == "bias" else "")
        parts.setdefault(m["module"], {})[part] = key
    return parts, plain


def pattern_value(patterns: dict | None, module: str, default):
    """PEFT's `rank_pattern` / `alpha_pattern` lookup: the first key matching the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def lora_scaling(alpha: float, r: int, use_rslora: bool) -> float:
    """s = α/r, or α/√r with rank-stabilised LoRA (PEFT's definition)."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


def factor_scaling(cfg: dict, module: str, a_shape, b_shape, label: str) -> tuple[int, float]:
    """(rank, s) of one module's factors A and B, checked: 2-D, one rank, the rank the config says."""
    a_shape, b_shape = tuple(a_shape), tuple(b_shape)
    if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
        raise UserError(f"{label}: {module}: A {a_shape} and B {b_shape} are not LoRA factors of one rank")
    rank = a_shape[0]
    r_cfg = int(pattern_value(cfg.get("rank_pattern"), module, int(cfg.get("r", 8))))
    if r_cfg != rank:
        raise UserError(f"{label}: {module}: factors have rank {rank}, {ADAPTER_CONFIG} says r={r_cfg}")
    alpha = float(pattern_value(cfg.get("alpha_pattern"), module, float(cfg.get("lora_alpha", 8))))
    return rank, lora_scaling(alpha, rank, bool(cfg.get("use_rslora")))
