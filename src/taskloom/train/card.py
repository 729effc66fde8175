"""The adapter's model card (README.md): what it is for, how it was trained, what it scored, how to load it."""

from __future__ import annotations

from taskloom.tasks.types import TASK_TYPES

CARD = """---
library_name: peft
base_model: {base}
tags: [taskloom, lora, {tags}]
---
# {title} LoRA adapter

{description}

A LoRA adapter (rank {rank}, alpha {alpha}) for the `{base}` {kind}, trained by taskloom on
{what}.{head_line}

## Evaluation (eval splits)

| task | metric | base | base + this adapter | eval rows |
|---|---|---|---|---|
{rows}

## Training

- rows: {train_rows} · steps: {steps} · epochs: {epochs:.2f} · batch size: {batch_size}{mix}
- objective: {objective}
- learning rate: {lr} (AdamW, warm-up then linear decay) · max length: {max_length} tokens
- target modules: `{targets}` · trainable parameters: {trainable_params}
- seed: {seed} · device: {device} · precision: {precision} · wall time: {train_seconds:.1f} s

## Use

```bash
taskloom eval task.yaml --adapter {folder}
```

```python
from peft import PeftModel
from taskloom.models.{module} import {loader}
tok, model = {loader}("{base}")
model = PeftModel.from_pretrained(model, "{folder}")
```
"""


def model_card(tasks: list, metrics: dict, targets: str, folder: str = "adapter") -> str:
    per_task = metrics["tasks"] if "tasks" in metrics else {tasks[0].name: metrics}
    rows = "\n".join(
        f"| {t.name} | {m['metric']} | {m['base']:.4f} | {m['tuned']:.4f} | {m['eval_rows']} |"
        for t in tasks
        for m in [per_task[t.name]]
    )
    labelled = [t for t in tasks if TASK_TYPES[t.type].labelled]
    where = "`head.safetensors` (labels in `head.json`)" if len(tasks) == 1 else "`heads/<task>/`"
    head_line = f"\nClassification heads ({where}) are applied to the normalised embedding." if labelled else ""
    causal = TASK_TYPES[tasks[0].type].base_kind == "causal_lm"
    multi = len(tasks) > 1
    return CARD.format(
        title=" + ".join(t.name for t in tasks),
        tags=", ".join(sorted({t.type for t in tasks})),
        description="\n\n".join(t.description.strip() for t in tasks),
        kind="causal language model" if causal else "sentence encoder",
        what=("the tasks " + ", ".join(f"`{t.name}`" for t in tasks) + " at once")
        if multi
        else f"the `{tasks[0].type}` task `{tasks[0].name}`",
        head_line=head_line,
        rows=rows,
        base=metrics["base_model"],
        mix=(f" · tasks sampled at temperature {metrics['temperature']}, {metrics['mixing']} batches" if multi else ""),
        objective=(
            "; ".join(sorted({f"{t.type}: {TASK_TYPES[t.type].objective}" for t in tasks}))
            if multi
            else TASK_TYPES[tasks[0].type].objective
        ),
        targets=targets,
        folder=folder,
        module="causal" if causal else "encoder",
        loader="load_causal" if causal else "load_encoder",
        **{
            k: metrics[k]
            for k in (
                "rank",
                "alpha",
                "train_rows",
                "steps",
                "epochs",
                "batch_size",
                "lr",
                "precision",
                "max_length",
                "trainable_params",
                "seed",
                "device",
                "train_seconds",
            )
        },
    )
