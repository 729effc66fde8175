"""Sentence encoders: a transformer body, mean pooling over real tokens, L2 normalisation.

This is how all-MiniLM-L6-v2 was trained to be used, and the one embedding function every part of
taskloom shares (profiles, training, evaluation, serving, drift), so their numbers agree.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

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
    """Forward one batch with gradients as the caller's context decides; returns a torch tensor."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
    out = model(**batch)
    emb = mean_pool(out.last_hidden_state, batch["attention_mask"])
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
