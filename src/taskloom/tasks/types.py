"""Task types: what taskloom needs to know about one kind of task, in one object per type. Rows are
checked, validated, profiled, trained on and scored through it, so nothing else dispatches on the
`type:` of a task.yaml.

A new task type is one file with a `TaskType` subclass and one entry point in the
`taskloom.task_types` group (taskloom's own are listed in pyproject.toml the same way). An encoder
task type gives its row fields, `loss` (the training objective over a batch) and `score` (the
metric on eval rows); both see the encoder only through a function from texts to embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from taskloom.errors import UserError
from taskloom.plugins import Registry
from taskloom.train.objectives import PAIR_LOSSES, classification_loss, info_nce_loss

# Chosen on Lee's validation pairs: cosine-MSE took Pearson 0.431 -> 0.529, CoSENT only to 0.467; CoSENT
# ranks well but un-calibrates the cosine that Pearson rewards (bench/train_quality.py --variants pair=cosent).
PAIR_OBJECTIVE = "cosine_mse"
BALANCE_FRACTION = 0.25  # validation warns when the smallest class has < 25% of an even share of the rows


class TaskType:
    """One kind of task. Subclasses set the class attributes and, for an encoder task, `loss` and `score`."""

    name: ClassVar[str]
    # required row fields and their kind: "str", "score" (a number in [0, 1]) or "str_list"
    fields: ClassVar[dict[str, str]]
    optional_fields: ClassVar[dict[str, str]] = {}
    main_text: ClassVar[str]  # the field with a row's main input text (profiles, drift references)
    text_fields: ClassVar[tuple[str, ...]]  # texts checked for length and blanks
    identity_fields: ClassVar[tuple[str, ...]]  # what makes two rows the same (duplicates, train/eval leakage)
    labelled: ClassVar[bool] = False  # rows carry a `label` from the task's `labels`; a linear head is trained
    base_kind: ClassVar[str] = "encoder"  # "encoder" (a sentence encoder) | "causal_lm" (taskloom's generation path)
    metric: ClassVar[str]  # the name of what `score` returns as "value"
    objective: ClassVar[str]  # the training objective in words (the model card)

    def check_row(self, where: str, row: dict, labels: list[str] | None) -> None:
        """Checks across a row's fields, beyond each field's kind; raise UserError(f"{where}: ...")."""

    def expectations(self, labels: list[str] | None) -> list[tuple[str, str, str | None, Any]]:
        """Great Expectations checks of a split beyond the fields' presence, nulls, text lengths,
        duplicates and leakage: [(check name, "error" | "warning", field, gxe.Expect...)]."""
        return []

    def texts(self, row: dict) -> list[str]:
        """The texts a row puts through the encoder (what a training batch costs)."""
        return [row[f] for f in self.text_fields]

    def loss(self, encode: Callable, rows: list[dict], task, head=None):
        """The training objective over a batch of rows (a torch scalar); `encode(texts)` gives their
        L2-normalised embeddings with gradients; `head` is the linear head of a labelled type."""
        raise NotImplementedError(f"task type {self.name}: no training objective")

    def score(self, embed: Callable, rows: list[dict], task, head=None) -> dict:
        """{"value": the metric, ...extras} on eval rows; `embed(texts)` gives numpy embeddings."""
        raise NotImplementedError(f"task type {self.name}: no metric")


class Classification(TaskType):
    name = "classification"
    fields: ClassVar[dict[str, str]] = {"text": "str", "label": "str"}
    main_text, text_fields, identity_fields = "text", ("text",), ("text",)
    labelled = True
    metric = "accuracy"
    objective = "cross-entropy of a linear head over the normalised embedding (head initialised from the probe)"

    def check_row(self, where, row, labels):
        if labels is not None and row["label"] not in labels:
            raise UserError(f"{where}: field 'label': {row['label']!r} is not one of [{', '.join(labels)}]")

    def expectations(self, labels):
        import great_expectations.expectations as gxe

        items: list[tuple[str, str, str | None, Any]] = [
            (
                "label_set",
                "error",
                "label",
                gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(labels or [])),
            )
        ]
        min_share = BALANCE_FRACTION / max(len(labels or []), 1)
        for label in labels or []:
            exp = gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[label], mostly=min_share)
            items.append(("class_balance", "warning", label, exp))
        return items

    def loss(self, encode, rows, task, head=None):
        import torch

        emb = encode([r["text"] for r in rows])
        gold = torch.tensor([task.labels.index(r["label"]) for r in rows], device=emb.device)
        return classification_loss(head(emb.float()), gold)

    def score(self, embed, rows, task, head=None):
        import numpy as np
        import torch

        x = torch.as_tensor(embed([r["text"] for r in rows]))
        with torch.no_grad():  # the head is only read: it stays where (and as what) the caller keeps it
            logits = torch.nn.functional.linear(x, head.weight.detach().float().cpu(), head.bias.detach().float().cpu())
        pred = logits.argmax(1).numpy()
        gold = np.array([task.labels.index(r["label"]) for r in rows])
        return {"value": float((pred == gold).mean())}


class PairSimilarity(TaskType):
    name = "pair_similarity"
    fields: ClassVar[dict[str, str]] = {"text_a": "str", "text_b": "str", "score": "score"}
    main_text, text_fields, identity_fields = "text_a", ("text_a", "text_b"), ("text_a", "text_b")
    metric = "pearson"
    objective = "cosine-MSE: the cosine of each pair regressed onto its gold score"

    def expectations(self, labels):
        import great_expectations.expectations as gxe

        return [
            (
                "score_range",
                "error",
                "score",
                gxe.ExpectColumnValuesToBeBetween(column="score", min_value=0.0, max_value=1.0),
            )
        ]

    def loss(self, encode, rows, task, head=None):
        import torch

        texts = list(dict.fromkeys([r["text_a"] for r in rows] + [r["text_b"] for r in rows]))  # each text once
        where = {t: i for i, t in enumerate(texts)}
        emb = encode(texts).float()
        a, b = emb[[where[r["text_a"]] for r in rows]], emb[[where[r["text_b"]] for r in rows]]
        gold = torch.tensor([float(r["score"]) for r in rows], device=emb.device)
        return PAIR_LOSSES[PAIR_OBJECTIVE]((a * b).sum(-1), gold)

    def score(self, embed, rows, task, head=None):
        import numpy as np

        texts = list(dict.fromkeys([r["text_a"] for r in rows] + [r["text_b"] for r in rows]))  # each text once
        where = {t: i for i, t in enumerate(texts)}
        e = embed(texts)
        a, b = e[[where[r["text_a"]] for r in rows]], e[[where[r["text_b"]] for r in rows]]
        cos = (a * b).sum(1)
        gold = np.array([float(r["score"]) for r in rows])
        return {"value": _pearson(cos, gold), "spearman": _spearman(cos, gold)}


def _pearson(x, y) -> float:
    import numpy as np

    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x, y) -> float:
    from scipy.stats import rankdata

    return _pearson(rankdata(x), rankdata(y))


class Retrieval(TaskType):
    name = "retrieval"
    fields: ClassVar[dict[str, str]] = {"query": "str", "positive": "str"}
    optional_fields: ClassVar[dict[str, str]] = {"negatives": "str_list"}
    main_text, text_fields, identity_fields = "query", ("query", "positive"), ("query",)
    metric = "mrr"
    objective = "InfoNCE with in-batch and given negatives, temperature 0.05"

    def texts(self, row):
        return [row["query"], row["positive"], *(row.get("negatives") or [])]

    def loss(self, encode, rows, task, head=None):
        import torch

        docs = list(dict.fromkeys([r["positive"] for r in rows] + [n for r in rows for n in r.get("negatives") or []]))
        where = {t: i for i, t in enumerate(docs)}
        q = encode([r["query"] for r in rows])
        d = encode(docs)
        positive = torch.tensor([where[r["positive"]] for r in rows], device=q.device)
        return info_nce_loss(q, d, positive)

    def score(self, embed, rows, task, head=None):
        import numpy as np

        pool = list(dict.fromkeys([r["positive"] for r in rows] + [n for r in rows for n in r.get("negatives") or []]))
        where = {t: i for i, t in enumerate(pool)}
        q = embed([r["query"] for r in rows])
        d = embed(pool)
        sims = q @ d.T
        pos = sims[np.arange(len(rows)), [where[r["positive"]] for r in rows]]
        ranks = 1 + (sims > pos[:, None]).sum(1)
        return {"value": float((1.0 / ranks).mean()), "recall_at_1": float((ranks == 1).mean()), "pool": len(pool)}


class Generation(TaskType):
    """Trained and scored on a causal LM by taskloom.train.generation_task (not through `loss`/`score`)."""

    name = "generation"
    fields: ClassVar[dict[str, str]] = {"prompt": "str", "response": "str"}
    optional_fields: ClassVar[dict[str, str]] = {
        "keys": "str_list"
    }  # the response's answer-bearing parts (token weighting)
    main_text, text_fields, identity_fields = "prompt", ("prompt", "response"), ("prompt",)
    base_kind = "causal_lm"
    metric = "answer_loss"
    objective = "next-token cross-entropy on the answer tokens only (the prompt is masked out)"

    def check_row(self, where, row, labels):
        for key in row.get("keys") or []:
            if not key.strip():
                raise UserError(f"{where}: field 'keys': a key is blank")
            if key not in row["response"]:
                raise UserError(f"{where}: field 'keys': {key!r} is not part of the response")


# name → task type: the ones above and every installed plugin's, through the `taskloom.task_types`
# entry points (pyproject.toml; see taskloom.plugins)
TASK_TYPES: Mapping[str, TaskType] = Registry("taskloom.task_types", TaskType, "task type")


def task_type(name: str) -> TaskType:
    """The task type called `name`, or UserError listing the known ones."""
    if name not in TASK_TYPES:
        raise UserError(f"unknown task type {name!r}: use one of [{', '.join(TASK_TYPES)}]")
    return TASK_TYPES[name]
