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

    from taskloom.models.heads import save_head

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

    from taskloom.models.heads import load_head

    head, labels = load_head(model / "heads" / "toy")
    emb = embed_texts(texts)
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(emb)), -1).numpy()
    return [labels[i] for i in probs.argmax(1)], probs


def make_adapter(root, name, seed, labels=None, scale=0.3, rank=4):
    """A real PEFT LoRA folder on MiniLM (random, non-zero B so it changes the embedding), with the
    sha256, task.json and (given labels) a random head, as `taskloom train` writes them."""
    import copy
    import json

    import torch
    from peft import LoraConfig, get_peft_model

    from taskloom.artifacts import write_digest
    from taskloom.models.encoder import cached_encoder
    from taskloom.models.heads import save_head
    from taskloom.train.lora import TARGET_MODULES

    folder = root / name
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(cached_encoder("minilm")[1]),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGET_MODULES, init_lora_weights=False))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(scale)
    model.save_pretrained(str(folder))
    write_digest(folder / "adapter_model.safetensors")
    if labels:
        save_head(folder, torch.nn.Linear(384, len(labels)), list(labels))
    (folder / "task.json").write_text(json.dumps({"task": name, "type": "classification" if labels else "retrieval",
                                                   "base": "minilm"}))
    return folder


def reference_adapter(adapter, texts):
    """In-process PeftModel(MiniLM + adapter) embeddings, and its head's (labels, probs) when it has one."""
    import torch
    from peft import PeftModel

    from taskloom.models.encoder import load_encoder
    from taskloom.models.heads import has_head, load_head

    tok, base = load_encoder("minilm")
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    emb = embed_texts(texts, model=model, tok=tok)
    if not has_head(adapter):
        return emb, None, None
    head, labels = load_head(adapter)
    with torch.no_grad():
        probs = torch.softmax(head(torch.from_numpy(emb)), -1).numpy()
    return emb, [labels[i] for i in probs.argmax(1)], probs
