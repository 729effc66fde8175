"""One generation task trained on a causal LM: prompt → response pairs, the prompt masked out of the loss.

The same five members the loop asks of every task (see encoder_task.py). Rows are tokenised once
(train/generation.py); a batch weighs its answer tokens (times their key weight), which is what the
loss is a mean over, so data-parallel shards combine exactly.
"""

from __future__ import annotations

from taskloom.errors import UserError
from taskloom.models.chunks import by_length, overhead_for
from taskloom.train.generation import answer_loss, collate, encode_rows, generation_loss


class GenerationTask:
    def __init__(self, task, train_rows: list[dict], eval_rows: list[dict], tok, max_length: int, key_weight: float):
        self.task, self.name, self.type = task, task.name, task.type
        self.tok, self.max_length, self.eval_rows = tok, max_length, eval_rows
        examples = encode_rows(tok, train_rows, max_length, key_weight=key_weight)
        self.examples = [e for e in examples if any(label != -100 for label in e["labels"])]
        if not self.examples:
            raise UserError(f"{task.name}: no training row keeps an answer token within --max-length {max_length}")
        self.lengths = [len(e["input_ids"]) for e in self.examples]
        self._units = [sum(w for w, label in zip(e["weights"], e["labels"]) if label != -100) for e in self.examples]
        self.head = None

    def prepare(self, model, seed: int) -> None:
        return None

    def modules(self) -> dict:
        return {}

    def units(self, idx: list[int]) -> float:
        return float(sum(self._units[i] for i in idx))

    def tokens(self, idx: list[int]) -> int:
        return sum(self.lengths[i] for i in idx)

    def loss(self, model, idx: list[int]):
        device = next(model.parameters()).device
        chunks = by_length([self.lengths[i] for i in idx], overhead_for(device))  # a random batch, padded little
        return generation_loss(
            model, [collate([self.examples[idx[j]] for j in rows], self.tok.pad_token_id, device) for rows in chunks]
        )

    def evaluate(self, model) -> tuple[dict, float]:
        """Held-out answer loss (mean NLL per answer token, lower is better) and its perplexity; the
        metric IS the training objective on the eval split, so one pass gives both."""
        import math

        value = answer_loss(self.tok, model, self.eval_rows)  # at the eval length, whatever training used
        return {
            "task": self.name,
            "type": self.type,
            "metric": "answer_loss",
            "value": value,
            "perplexity": math.exp(value),
            "n": len(self.eval_rows),
            "higher_is_better": False,
        }, value

    def save(self, folder, multi: bool) -> None:
        return None
