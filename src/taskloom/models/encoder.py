"""Sentence encoders: a transformer body, mean pooling over real tokens, L2 normalisation.

This is how all-MiniLM-L6-v2 was trained to be used, and the one embedding function every part of
taskloom shares (profiles, training, evaluation, serving, drift), so their numbers agree.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from taskloom.errors import UserError
from taskloom.models.chunks import by_length, overhead_for
from taskloom.models.registry import resolve_base


def load_encoder(name_or_path: str | os.PathLike = "minilm"):
    """(tokenizer, model) in eval mode, on CPU, float32."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_base(name_or_path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tok, model


@lru_cache(maxsize=4)
def cached_encoder(name_or_path: str = "minilm"):
    """The same (tokenizer, model) for repeated calls in one process (read-only use only)."""
    return load_encoder(name_or_path)


def mean_pool(last_hidden, attention_mask):
    """Average of token vectors where the mask is 1 (padding never counts)."""
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def encode(model, tok, texts: list[str], max_length: int = 128, normalize: bool = True):
    """Forward texts with gradients as the caller's context decides; returns a torch tensor, one row
    per text in the caller's order. The texts run in length-aware chunks (models/chunks.py), each
    padded to its own longest row: the numbers of one padded batch, with little work spent on padding."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    if not texts:
        return torch.empty(0, model.config.hidden_size, device=device)
    enc = tok(texts, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    chunks = by_length([len(ids) for ids in enc["input_ids"]], overhead_for(device))
    parts = []
    for rows in chunks:
        batch = tok.pad({k: [enc[k][i] for i in rows] for k in keys}, return_tensors="pt").to(device)
        out = model(**batch)
        parts.append(mean_pool(out.last_hidden_state, batch["attention_mask"]))
    emb = parts[0] if len(parts) == 1 else torch.cat(parts)
    order = [i for rows in chunks for i in rows]
    if order != list(range(len(order))):
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[order] = torch.arange(len(order))
        emb = emb[inverse.to(emb.device)]
    return F.normalize(emb, dim=-1) if normalize else emb


def embed_texts(
    texts: list[str],
    model_name: str | os.PathLike = "minilm",
    *,
    model=None,
    tok=None,
    batch_size: int = 64,
    max_length: int = 128,
) -> np.ndarray:
    """L2-normalised float32 embeddings, shape (len(texts), dim). Sorts by length to pad less."""
    import torch

    if model is None or tok is None:
        tok, model = cached_encoder(str(model_name))
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            out[idx] = encode(model, tok, [texts[j] for j in idx], max_length).float().cpu().numpy()
    return out


def model_dir_has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))


def hidden_size(model_path: Path) -> int:
    """The embedding width from a model folder's config.json, without loading the weights."""
    cfg = json.loads((model_path / "config.json").read_text())
    for key in ("hidden_size", "d_model", "dim", "n_embd"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    raise UserError(f"{model_path / 'config.json'}: no hidden_size, cannot size the EMBEDDING output")
