"""One task trained on a sentence encoder: its rows, its objective, its head and its metric.

The loop sees every task through the same five members, whatever the type: `lengths` (tokens per
row), `units(idx)` and `tokens(idx)` (what a batch weighs, what it costs), `loss(model, idx)` and
`evaluate(model)` (the metric and the objective on the eval split). The objective and the metric
are the task type's (taskloom.tasks.types); a labelled type (classification) trains a linear head
over the embedding that starts from the fitted linear probe, which is also the honest baseline.
"""

from __future__ import annotations

import math

from taskloom.models.encoder import encode
from taskloom.models.heads import save_head
from taskloom.tasks.types import TASK_TYPES
from taskloom.train.device import eval_autocast
from taskloom.train.evaluate import fit_probe_head, score_encoder


class EncoderTask:
    def __init__(self, task, train_rows: list[dict], eval_rows: list[dict], tok, max_length: int):
        self.task, self.name, self.type = task, task.name, task.type
        self.kind = TASK_TYPES[task.type]
        self.rows, self.eval_rows, self.tok, self.max_length = train_rows, eval_rows, tok, max_length
        self.head = None
        # tokens per row as the model sees them (truncated): what a batch costs
        self.lengths = [min(n, max_length) for n in self._token_counts(train_rows)]

    def _texts(self, row: dict) -> list[str]:
        return self.kind.texts(row)

    def _token_counts(self, rows: list[dict]) -> list[int]:
        per_text = self.tok([t for r in rows for t in self._texts(r)], add_special_tokens=True)["input_ids"]
        out, at = [], 0
        for r in rows:
            n = len(self._texts(r))
            out.append(sum(min(len(ids), self.max_length) for ids in per_text[at : at + n]))
            at += n
        return out

    # ---- what the loop asks -------------------------------------------------------------------
    def prepare(self, model, seed: int) -> None:
        """Classification: fit the linear probe on the frozen encoder (the baseline and the head's start)."""
        if self.kind.labelled:
            device = next(model.parameters()).device  # fitted on the CPU, trained where the model is
            self.head = fit_probe_head(self.task, self.tok, model, self.rows, seed=seed).to(device)

    def modules(self) -> dict:
        return {f"heads.{self.name}": self.head} if self.head is not None else {}

    def units(self, idx: list[int]) -> float:
        return float(len(idx))  # every objective here is a mean over the batch's rows

    def tokens(self, idx: list[int]) -> int:
        return sum(self.lengths[i] for i in idx)

    def loss(self, model, idx: list[int]):
        return self._loss(model, [self.rows[i] for i in idx])

    def _loss(self, model, rows: list[dict]):
        return self.kind.loss(lambda texts: encode(model, self.tok, texts, self.max_length), rows, self.task, self.head)

    def evaluate(self, model) -> tuple[dict, float]:
        """The task metric on the eval split, and the training objective there (no dropout, no
        gradients, a mean over rows)."""
        return score_encoder(self.task, self.tok, model, rows=self.eval_rows, head=self.head), self._eval_loss(model)

    def _eval_loss(self, model, batch_size: int = 64) -> float:
        import torch

        was_training = model.training
        model.eval()
        try:
            total, n = 0.0, len(self.eval_rows)
            device = next(model.parameters()).device.type
            with torch.no_grad(), eval_autocast(device):
                for start in range(0, n, batch_size):
                    rows = self.eval_rows[start : start + batch_size]
                    total += float(self._loss(model, rows)) * len(rows)
        finally:
            model.train(was_training)
        return total / n if n else math.nan

    def save(self, folder, multi: bool) -> None:
        """The head beside the adapter (single task) or under heads/<task>/ (one adapter, many tasks)."""
        if self.head is not None:
            save_head(folder / "heads" / self.name if multi else folder, self.head, self.task.labels)
