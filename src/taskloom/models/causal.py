"""Causal language models (the base of generation tasks), loaded offline.

A catalog name resolves through the registry; a GGUF-only base is dequantised once into the local
cache (see taskloom.models.cache).
"""

from __future__ import annotations

import json
import os

from taskloom.errors import UserError
from taskloom.models.cache import quiet_transformers
from taskloom.models.registry import resolve_base

# The Llama projection layers LoRA wraps (attention and MLP), as a regex PEFT matches on full names.
CAUSAL_TARGET_MODULES = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def load_causal(name_or_path: str | os.PathLike = "smollm2", device: str = "cpu"):
    """(tokenizer, model) in eval mode, float32, on `device`; a catalog name or a local HF folder.

    The tokenizer always has a pad token (the end-of-sequence token when the model names none).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = resolve_base(name_or_path)
    cfg = json.loads((path / "config.json").read_text())
    if "CausalLM" not in " ".join(cfg.get("architectures") or []):
        raise UserError(
            f"base model {str(name_or_path)!r}: not a causal language model (architectures {cfg.get('architectures')})"
        )
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(device)  # type: ignore[arg-type]  # transformers' decorated PreTrainedModel.to loses `self` in its types
    model.eval()
    return tok, model
