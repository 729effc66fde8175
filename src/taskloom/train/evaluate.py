"""Score a task's eval split (or its validation split, to choose options): the base model, base + a
LoRA adapter (+ head), or a full (merged) model.

Metrics are the task type's (taskloom.tasks.types): classification accuracy; pair_similarity Pearson
of cosine vs gold score (Spearman too); retrieval MRR of each query's positive among the pool of all
eval positives and negatives; generation the held-out answer loss on the causal LM.

    taskloom eval task.yaml --adapter runs/rt/adapter

`score_encoder` is the in-process entry: give it any (tokenizer, model) pair already built (a merged
model, a PEFT model) and, for classification, a head; `evaluate_task` loads those from folders.
Classification results also carry the eval split's confusion matrix (`confusion_matrix`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from taskloom.artifacts import verify_digest
from taskloom.data.rows import load_rows
from taskloom.errors import UserError
from taskloom.models.causal import load_causal
from taskloom.models.encoder import embed_texts, load_encoder
from taskloom.models.heads import align_head, fit_probe, has_head, load_head
from taskloom.tasks.types import TASK_TYPES
from taskloom.train.device import eval_autocast, resolve_device
from taskloom.train.generation import answer_loss

EVAL_MAX_LENGTH = 128  # tokens per text when scoring: the serving length, whatever training used


def check_trainable_type(task) -> None:
    """For the encoder-only paths (scoring embeddings, merge search)."""
    if TASK_TYPES[task.type].base_kind != "encoder":
        raise UserError(f"task {task.name}: a {task.type} task is scored on a causal LM, not on embeddings")


def load_split(task, split: str) -> list[dict]:
    """Rows of one of the task's splits (train, validation, eval), checked by the row loader; an empty or
    missing split is a UserError."""
    path = task.split_path(split)
    rows = load_rows(path, task.type, task.labels, task.validation.bad_rows)
    if not rows:
        raise UserError(f"{path}: no rows in the {split} split")
    return rows


def embed(tok, model, texts: list[str], max_length: int = EVAL_MAX_LENGTH, batch_size: int = 64) -> np.ndarray:
    """THE embedding (mean pool + L2 norm) on the model's device, bf16 autocast on CUDA."""
    device = next(model.parameters()).device.type
    was_training = model.training
    model.eval()
    with eval_autocast(device):
        out = embed_texts(texts, model=model, tok=tok, batch_size=batch_size, max_length=max_length)
    model.train(was_training)
    return out


def fit_probe_head(task, tok, model, train_rows: list[dict], seed: int = 0):
    """The honest classification baseline: a logistic-regression head on this encoder's frozen embeddings."""
    x = embed(tok, model, [r["text"] for r in train_rows])
    y = np.array([task.labels.index(r["label"]) for r in train_rows])
    return fit_probe(x, y, len(task.labels), seed=seed)


def score_encoder(
    task, tok, model, *, rows: list[dict] | None = None, head=None, train_rows: list[dict] | None = None
) -> dict:
    """The task metric for an already-built encoder (no reloading): {"task","type","metric","value","n",...}.

    `head` (classification): a torch Linear over the embedding whose rows follow `task.labels`; when None,
    a linear probe is fitted on the train split with this encoder (frozen). `rows`: the eval rows
    (default: the task's eval split)."""
    check_trainable_type(task)
    kind = TASK_TYPES[task.type]
    rows = load_split(task, "eval") if rows is None else rows
    result = {"task": task.name, "type": task.type, "metric": kind.metric, "n": len(rows)}
    if kind.labelled and head is None:
        head = fit_probe_head(task, tok, model, train_rows if train_rows is not None else load_split(task, "train"))
    seen: dict[tuple[str, ...], np.ndarray] = {}

    def embed_once(texts: list[str]) -> np.ndarray:  # the confusion matrix reuses the metric's embeddings
        key = tuple(texts)
        if key not in seen:
            seen[key] = embed(tok, model, texts)
        return seen[key]

    result.update(kind.score(embed_once, rows, task, head))
    if kind.labelled and task.labels and all(r.get("label") in task.labels for r in rows):
        result["confusion"] = confusion_matrix(task, embed_once([r[kind.main_text] for r in rows]), rows, head)
    return result


def confusion_matrix(task, x: np.ndarray, rows: list[dict], head) -> dict:
    """{"labels", "matrix"}: matrix[i][j] counts the rows labelled labels[i] that the head predicts as
    labels[j] (labels in `task.labels` order), from the embeddings `x` of the rows' texts. The same
    argmax as the classification metric, so the diagonal's share is the accuracy; what the KFP UI shows
    as the step's ClassificationMetrics."""
    import torch

    with torch.no_grad():
        logits = torch.nn.functional.linear(
            torch.as_tensor(x), head.weight.detach().float().cpu(), head.bias.detach().float().cpu()
        )
    pred = logits.argmax(1).numpy()
    gold = np.array([task.labels.index(r["label"]) for r in rows], dtype=np.int64)
    counts = np.zeros((len(task.labels), len(task.labels)), dtype=np.int64)
    np.add.at(counts, (gold, pred), 1)
    return {"labels": list(task.labels), "matrix": counts.tolist()}


def _adapter_info(adapter: Path, task) -> dict:
    if not (adapter / "adapter_config.json").exists():
        raise UserError(f"--adapter {adapter}: not an adapter folder (no adapter_config.json)")
    info = json.loads((adapter / "task.json").read_text()) if (adapter / "task.json").exists() else {}
    types = {t["type"] for t in info.get("tasks", [])} if info.get("type") == "multitask" else {info.get("type")}
    if info.get("type") and task.type not in types:
        kinds = f"a {types.pop()} task" if len(types) == 1 else f"{'/'.join(sorted(map(str, types)))} tasks"
        raise UserError(f"--adapter {adapter}: trained for {kinds}, but {task.name} is {task.type}")
    return info


def _evaluate_generation(task, adapter, model, device: str, split: str = "eval") -> dict:
    """Held-out answer loss of the causal LM base, base + adapter, or a full model folder."""
    import math

    rows = load_split(task, split)
    if adapter is not None:
        adapter = Path(adapter)
        info = _adapter_info(adapter, task)
        tok, lm = load_adapter_model(info.get("base") or task.base_model, adapter, device, causal=True)
        source = str(adapter)
    elif model is not None:
        if not Path(model).is_dir():
            raise UserError(f"--model {model}: not a folder")
        tok, lm = load_causal(model)
        source = str(model)
    else:
        tok, lm = load_causal(task.base_model)
        source = f"base:{task.base_model}"
    lm.to(device).eval()
    value = answer_loss(tok, lm, rows)
    return {
        "task": task.name,
        "type": task.type,
        "metric": "answer_loss",
        "value": value,
        "perplexity": math.exp(value),
        "n": len(rows),
        "higher_is_better": False,
        "source": source,
        "split": split,
    }


def load_adapter_model(base: str, adapter: Path, device: str = "cpu", causal: bool = False):
    """(tokenizer, base + LoRA PeftModel) in eval mode; the weights are checked against their sha256.
    `causal`: the base is a causal LM (generation), else a sentence encoder."""
    from peft import PeftModel

    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():  # PEFT would fall back to a pickled adapter_model.bin: never load one
        raise UserError(f"--adapter {adapter}: no {weights.name} (adapters are loaded from safetensors only)")
    if weights.with_name(weights.name + ".sha256").exists() and not verify_digest(weights):
        raise UserError(f"{weights}: sha256 does not match (corrupted adapter?)")
    tok, model = (load_causal if causal else load_encoder)(base)
    with warnings.catch_warnings():  # a transformers deprecation notice raised inside PEFT
        warnings.simplefilter("ignore", FutureWarning)
        model = PeftModel.from_pretrained(model, str(adapter)).to(device)
    model.eval()
    return tok, model


def evaluate_task(task, adapter=None, model=None, device: str = "auto", split: str = "eval") -> dict:
    """Score one of `task`'s held-out splits (eval, or validation to choose options) with the base model,
    base + `adapter`, or the full model folder `model`."""
    if adapter is not None and model is not None:
        raise UserError("give --adapter or --model, not both")
    device = resolve_device(device)
    if TASK_TYPES[task.type].base_kind == "causal_lm":
        return _evaluate_generation(task, adapter, model, device, split)
    rows = load_split(task, split)
    head = None
    if adapter is not None:
        adapter = Path(adapter)
        info = _adapter_info(adapter, task)
        if TASK_TYPES[task.type].labelled:
            # a single-task adapter keeps its head beside it; a multi-task one under heads/<task>/
            head_dir = adapter / "heads" / task.name if has_head(adapter / "heads" / task.name) else adapter
            if not has_head(head_dir):
                raise UserError(
                    f"--adapter {adapter}: no classification head for {task.name} (head.safetensors + head.json)"
                )
            raw, labels = load_head(head_dir)
            head = align_head(raw, labels, task.labels, str(head_dir / "head.json"))
        tok, enc = load_adapter_model(info.get("base") or task.base_model, adapter, device)
        source = str(adapter)
    elif model is not None:
        model = Path(model)
        if not model.is_dir():
            raise UserError(f"--model {model}: not a folder")
        if TASK_TYPES[task.type].labelled:
            head_dir = model / "heads" / task.name
            if not has_head(head_dir):
                raise UserError(
                    f"--model {model}: no head for task {task.name!r} (expected {head_dir}/head.safetensors)"
                )
            raw, labels = load_head(head_dir)
            head = align_head(raw, labels, task.labels, str(head_dir / "head.json"))
        tok, enc = load_encoder(model)
        enc.to(device)
        source = str(model)
    else:
        tok, enc = load_encoder(task.base_model)
        enc.to(device)
        source = f"base:{task.base_model}"
    result = score_encoder(task, tok, enc, rows=rows, head=head)
    result["source"] = source
    result["split"] = split
    return result
