"""A tiny meta-LoRA bank for tests: chatterbot topic-pair tasks, adapters trained by taskloom's own train
path (2 steps), bank.json as `taskloom metalora build` writes it."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from taskloom import steps
from taskloom.data.rows import write_rows
from taskloom.specs import TrainSpec, load_task
from taskloom.tasks import corpora
from taskloom.train.lora import TARGET_MODULES

RANK = 4
BANK = [("ai", "emotion", "seen"), ("coding", "trivia", "seen"), ("humor", "science", "val")]


def chat_task(folder: Path, a: str, b: str, n_train: int = 16, n_eval: int = 12) -> Path:
    """task.yaml + splits: is a chatterbot utterance (two words or more) about topic `a` or `b`?"""
    by: dict[str, list[str]] = {}
    for topic, conv in corpora.chatterbot_conversations():
        by.setdefault(topic, []).extend(u for u in conv if len(u.split()) >= 2)
    train, eval_ = [], []
    for lab in (a, b):
        texts = sorted(set(by[lab]))
        train += [{"text": t, "label": lab} for t in texts[: n_train // 2]]
        eval_ += [{"text": t, "label": lab} for t in texts[n_train // 2 : (n_train + n_eval) // 2]]
    write_rows(folder / "train.jsonl", train)
    write_rows(folder / "eval.jsonl", eval_)
    spec = {
        "name": f"topic-{a}-{b}",
        "type": "classification",
        "description": f"Decide whether a short casual chatbot utterance is about {a} or about {b}.",
        "labels": [a, b],
        "data": {"train": "train.jsonl", "eval": "eval.jsonl"},
        "base_model": "minilm",
    }
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    return folder / "task.yaml"


def tiny_bank(root: Path, bank: list[tuple[str, str, str]] = BANK, rank: int = RANK) -> Path:
    """Train one adapter per (topic a, topic b, tier) into `root`; returns `root` (with bank.json)."""
    spec = TrainSpec(max_steps=2, batch_size=8, rank=rank, alpha=2.0 * rank, device="cpu", checkpoint_every=0)
    entries = []
    for a, b, tier in bank:
        task = load_task(chat_task(root / "tasks" / f"topic-{a}-{b}", a, b))
        m = steps.train([task], root / "adapters" / task.name, spec, progress=False)
        entries.append(
            {
                "name": task.name,
                "type": task.type,
                "corpus": "chatterbot",
                "tier": tier,
                "description": task.description,
                "labels": task.labels,
                "rows": 28,
                "adapter": f"adapters/{task.name}",
                "metrics": {"base": m["base"], "tuned": m["tuned"]},
            }
        )
    doc = {"base": "minilm", "rank": rank, "targets": TARGET_MODULES, "seed": 0, "tasks": entries}
    (root / "bank.json").write_text(json.dumps(doc))
    return root
