"""One task trained on a sentence encoder: its rows, its objective, its head and its metric.

The loop sees every task through the same five members, whatever the type: `lengths` (tokens per
row), `units(idx)` and `tokens(idx)` (what a batch weighs, what it costs), `loss(model, idx)` and
`evaluate(model)` (the metric and the objective on the eval split). Objectives: classification
cross-entropy of a linear head over the embedding (the head starts from the fitted linear probe,
which is also the honest baseline); pair_similarity cosine-MSE; retrieval InfoNCE with in-batch
negatives plus the rows' own negatives.
"""

from __future__ import annotations

import math

# Lee pairs (595 train / 105 eval), defaults: cosine-MSE took Pearson 0.741 -> 0.755 (Spearman 0.563 -> 0.598);
# CoSENT ranks well but un-calibrates the cosine: Pearson 0.741 -> 0.705 (Spearman 0.563 -> 0.577).
PAIR_OBJECTIVE = "cosine_mse"


class EncoderTask:
    def __init__(self, task, train_rows: list[dict], eval_rows: list[dict], tok, max_length: int):
        self.task, self.name, self.type = task, task.name, task.type
        self.rows, self.eval_rows, self.tok, self.max_length = train_rows, eval_rows, tok, max_length
        self.head = None
        # tokens per row as the model sees them (truncated): what a batch costs
        self.lengths = [min(n, max_length) for n in self._token_counts(train_rows)]

    def _texts(self, row: dict) -> list[str]:
        if self.type == "classification":
            return [row["text"]]
        if self.type == "pair_similarity":
            return [row["text_a"], row["text_b"]]
        return [row["query"], row["positive"], *(row.get("negatives") or [])]

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
        from taskloom.train.evaluate import fit_probe_head

        if self.type == "classification":
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
        import torch

        from taskloom.models.encoder import encode
        from taskloom.train.objectives import PAIR_LOSSES, classification_loss, info_nce_loss

        if self.type == "classification":
            emb = encode(model, self.tok, [r["text"] for r in rows], self.max_length)
            gold = torch.tensor([self.task.labels.index(r["label"]) for r in rows], device=emb.device)
            return classification_loss(self.head(emb.float()), gold)
        if self.type == "pair_similarity":
            texts = list(dict.fromkeys([r["text_a"] for r in rows] + [r["text_b"] for r in rows]))  # each text once
            where = {t: i for i, t in enumerate(texts)}
            emb = encode(model, self.tok, texts, self.max_length).float()
            a, b = emb[[where[r["text_a"]] for r in rows]], emb[[where[r["text_b"]] for r in rows]]
            gold = torch.tensor([float(r["score"]) for r in rows], device=emb.device)
            return PAIR_LOSSES[PAIR_OBJECTIVE]((a * b).sum(-1), gold)
        docs = list(dict.fromkeys([r["positive"] for r in rows] + [n for r in rows for n in r.get("negatives") or []]))
        where = {t: i for i, t in enumerate(docs)}
        q = encode(model, self.tok, [r["query"] for r in rows], self.max_length)
        d = encode(model, self.tok, docs, self.max_length)
        positive = torch.tensor([where[r["positive"]] for r in rows], device=q.device)
        return info_nce_loss(q, d, positive)

    def evaluate(self, model) -> tuple[dict, float]:
        """The task metric on the eval split, and the training objective there (no dropout, no
        gradients, a mean over rows)."""
        from taskloom.train.evaluate import score_encoder

        return score_encoder(self.task, self.tok, model, rows=self.eval_rows, head=self.head), self._eval_loss(model)

    def _eval_loss(self, model, batch_size: int = 64) -> float:
        import torch

        from taskloom.train.device import eval_autocast

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
        from taskloom.train.heads import save_head

        if self.head is not None:
            save_head(folder / "heads" / self.name if multi else folder, self.head, self.task.labels)
