"""A task's profile: the numbers the feature store keeps about it and drift is measured against.

Embeddings come from `taskloom.models.encoder.embed_texts` (MiniLM, mean-pooled, L2-normalised),
the same function serving and drift use, so a reference sample here is comparable to served inputs.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np

from taskloom.models.encoder import embed_texts
from taskloom.tasks.types import TASK_TYPES

REFERENCE_SIZE = 500
REFERENCE_ENCODER = "minilm"  # every drift reference, and every window tested against one, in this space
SEED = 0


def _field(spec, name: str):
    return spec[name] if isinstance(spec, dict) else getattr(spec, name)


def label_entropy(labels: list[str]) -> float:
    """Shannon entropy of the label distribution in bits (1.0 for two balanced classes)."""
    counts = Counter(labels)
    n = sum(counts.values())
    return float(-sum(c / n * math.log2(c / n) for c in counts.values())) if n else 0.0


def profile_task(
    spec, train_rows: list[dict], sample: int = REFERENCE_SIZE, seed: int = SEED, model: str = REFERENCE_ENCODER
) -> dict:
    """Profile of a task (a TaskSpec or a spec dict) from its training rows.

    `reference` is a seeded sample of up to `sample` embeddings of the distinct main texts (text,
    text_a, query or prompt); `centroid` is the mean of that sample's embeddings, so profiling a
    large task costs one encoder pass over `sample` texts, not over every row. The encoder is
    MiniLM whatever the task's base model, so profiles of all tasks share one space.
    """
    task_type = _field(spec, "type")
    field = TASK_TYPES[task_type].main_text
    texts = [str(r[field]) for r in train_rows]
    distinct = list(dict.fromkeys(texts))
    chosen = sorted(random.Random(seed).sample(range(len(distinct)), min(sample, len(distinct))))
    reference = embed_texts([distinct[i] for i in chosen], model)
    return {
        "task_id": _field(spec, "name"),
        "type": task_type,
        "rows": len(train_rows),
        "label_entropy": label_entropy([r["label"] for r in train_rows]) if TASK_TYPES[task_type].labelled else 0.0,
        "mean_length": float(np.mean([len(t) for t in texts])) if texts else 0.0,
        "centroid": reference.mean(axis=0).astype(float).tolist() if len(reference) else [],
        "reference": reference,
    }
