"""Shared by the serving tests: sample texts and a model folder with a real (random) head."""

from __future__ import annotations

import os

from taskloom.models.encoder import embed_texts
from taskloom.models.registry import resolve_base

TEXTS = [
    "A quietly devastating film, beautifully acted.",
    "dull",
    "The plot goes nowhere and the jokes fall flat, although the score by the composer is lovely at times.",
    "Fresh, funny and smart.",
    "I would not watch it again.",
]


def make_head_model(root, labels=("fresh", "rotten"), dim=384, seed=0):
    """A model folder: MiniLM's files (symlinked) + heads/toy/ holding a random Linear head."""
    import torch

    from taskloom.train.heads import save_head

    model = root / "model"
    model.mkdir(parents=True)
    for f in resolve_base("minilm").iterdir():
        if f.is_file():
            os.symlink(f, model / f.name)
    torch.manual_seed(seed)
    save_head(model / "heads" / "toy", torch.nn.Linear(dim, len(labels)), list(labels))
    return model


def reference_head(model, texts):
    """In-process head output: softmax(Linear(embed_texts(texts)))."""
    import torch

    from taskloom.train.heads import load_head

    head, labels = load_head(model / "heads" / "toy")
    emb = embed_texts(texts)
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(emb)), -1).numpy()
    return [labels[i] for i in probs.argmax(1)], probs
