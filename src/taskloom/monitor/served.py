"""The served model's view of traffic: what its head answers (class probabilities) for each text.

Input drift is tested in the reference encoder's space (`steps.profile_step`), which does not see a
change in the mix of labels. The served head does: its probabilities on a window are compared with
its probabilities on rows the model never trained on (`--held-out TASK=FILE`, e.g. the task's
eval.jsonl), computed here with the same model and head, so both sides come from one function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from taskloom.errors import UserError
from taskloom.models.encoder import embed_texts
from taskloom.models.heads import load_head


class ServedView:
    """Class probabilities of `model` (a model folder with heads/<task>/) for texts of a task."""

    def __init__(self, model: str | Path, held_out: dict[str, str]):
        self.model, self.held_out = Path(model), {k: Path(v) for k, v in held_out.items()}
        self.heads: dict = {}
        self.references: dict[str, np.ndarray] = {}

    def check(self) -> None:
        """Every named task has a head and a readable held-out file (its reference is computed now), before
        anything is written."""
        if not self.model.is_dir():
            raise UserError(f"--model {self.model}: the served model folder is needed (its heads score the windows)")
        for task in self.held_out:
            self.reference(task)

    def head(self, task: str):
        if task not in self.heads:
            folder = self.model / "heads" / task
            if not folder.is_dir():
                raise UserError(f"--model {self.model}: no classification head heads/{task}/ (it scores the windows)")
            self.heads[task] = load_head(folder)
        return self.heads[task]

    def labels(self, task: str, probs: np.ndarray) -> np.ndarray:
        """The head's label of each row of class probabilities."""
        return np.asarray(self.head(task)[1], dtype=str)[np.asarray(probs).argmax(1)]

    def answers(self, task: str, emb: np.ndarray) -> np.ndarray:
        """softmax(head(embedding)) for each row of embeddings."""
        import torch

        head, _ = self.head(task)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
            return torch.softmax(head(x), dim=-1).numpy().astype(np.float64)

    def probs(self, task: str, texts: list[str]) -> np.ndarray:
        """The head's probabilities for each text, embedded by the served model as it computes them."""
        return self.answers(task, embed_texts(texts, model_name=str(self.model)))

    def reference(self, task: str) -> np.ndarray:
        """The head's probabilities on the task's held-out rows (read and computed once per run)."""
        from taskloom.monitor.drift import MIN_ROWS, read_texts

        if task not in self.references:
            path = self.held_out.get(task)
            if path is None:
                raise UserError(
                    f"task '{task}': no --held-out {task}=FILE (the served view compares the head's answers on "
                    "the window with its answers on rows it never trained on)"
                )
            self.head(task)
            if not path.is_file():
                raise UserError(f"--held-out {task}={path}: no such file")
            texts = read_texts(path, "text")
            if len(texts) < MIN_ROWS:
                raise UserError(f"--held-out {task}={path}: fewer than {MIN_ROWS} rows")
            self.references[task] = self.probs(task, texts)
        return self.references[task]
