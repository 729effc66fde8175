"""The adapter's model card (README.md): what it is for, how it was trained, what it scored, how to load it."""

from __future__ import annotations

CARD = """---
library_name: peft
base_model: {base}
tags: [taskloom, lora, {type}]
---
# {task} LoRA adapter

{description}

A LoRA adapter (rank {rank}, alpha {alpha}) for the `{base}` sentence encoder, trained by taskloom
for the `{type}` task `{task}`.{head_line}

## Evaluation (eval split, {eval_rows} rows)

| model | {metric} |
|---|---|
| base `{base}`{base_note} | {base_value:.4f} |
| base + this adapter | {tuned_value:.4f} |

## Training

- rows: {train_rows} · steps: {steps} · epochs: {epochs:.2f} · batch size: {batch_size}
- objective: {objective}
- learning rate: {lr} (AdamW, warm-up then linear decay) · max length: {max_length} tokens
- target modules: `{targets}` · trainable parameters: {trainable_params}
- seed: {seed} · device: {device} · wall time: {train_seconds:.1f} s

## Use

```bash
taskloom eval task.yaml --adapter {folder}
```

```python
from peft import PeftModel
from taskloom.models.encoder import load_encoder
tok, model = load_encoder("{base}")
model = PeftModel.from_pretrained(model, "{folder}")
```
Embeddings are mean-pooled over real tokens and L2-normalised (`taskloom.models.encoder.embed_texts`).
"""

OBJECTIVES = {
    "classification": "cross-entropy of a linear head over the normalised embedding (head initialised from the probe)",
    "pair_similarity": "cosine-MSE: the cosine of each pair regressed onto its gold score",
    "retrieval": "InfoNCE with in-batch and given negatives, temperature 0.05",
}


def model_card(task, metrics: dict, targets: str, folder: str = "adapter") -> str:
    head_line = (
        "\nIt comes with a classification head (`head.safetensors`, labels in `head.json`: "
        + ", ".join(task.labels)
        + ") applied to the normalised embedding."
        if task.type == "classification"
        else ""
    )
    return CARD.format(
        task=task.name,
        type=task.type,
        description=task.description.strip(),
        head_line=head_line,
        base=metrics["base_model"],
        base_note=" + linear probe" if task.type == "classification" else "",
        metric=metrics["metric"],
        base_value=metrics["base"],
        tuned_value=metrics["tuned"],
        objective=OBJECTIVES[task.type],
        targets=targets,
        folder=folder,
        **{k: metrics[k] for k in ("rank", "alpha", "eval_rows", "train_rows", "steps", "epochs", "batch_size", "lr",
                                    "max_length", "trainable_params", "seed", "device", "train_seconds")},
    )
