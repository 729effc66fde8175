"""The classification head: one Linear layer over the L2-normalised, mean-pooled embedding.

Stored beside the adapter (or under a merged model's `heads/<task>/`) as `head.safetensors`
(`weight` (n_labels, dim), `bias` (n_labels,)) and `head.json` (`labels` in logit order, `dim`,
`input`). Serving applies it to the same EMBEDDING it returns, so training, evaluation and serving
agree. `fit_probe` gives the honest baseline: a logistic regression on frozen embeddings, with its
L2 strength chosen by cross-validation on the training rows; it also initialises the trained head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from taskloom.artifacts import save_safetensors, verify_digest, write_json
from taskloom.errors import UserError
from taskloom.jsonfiles import read_json

HEAD_INPUT = "l2-normalised mean-pooled embedding"
PROBE_L2 = (1e-2, 1e-3, 1e-4, 1e-5)


def new_head(dim: int, n_labels: int):
    import torch

    return torch.nn.Linear(dim, n_labels)


def save_head(folder: str | Path, head, labels: list[str]) -> Path:
    """Write head.safetensors (+ sha256) and head.json into `folder`."""
    folder = Path(folder)
    tensors = {"weight": head.weight.detach().float().cpu(), "bias": head.bias.detach().float().cpu()}
    save_safetensors(folder / "head.safetensors", tensors)
    write_json(folder / "head.json", {"labels": list(labels), "dim": int(head.in_features), "input": HEAD_INPUT})
    return folder


def read_tensors(path: Path, load_file) -> dict:
    """Every tensor of a safetensors file, or UserError naming it (a truncated or foreign file)."""
    from safetensors import SafetensorError

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{path}: not a readable safetensors file ({reason})") from None


def has_head(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / "head.safetensors").exists() and (folder / "head.json").exists()


def load_head(folder: str | Path):
    """(torch Linear, labels) from a folder holding head.safetensors + head.json."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    if not has_head(folder):
        raise UserError(f"{folder}: no classification head (head.safetensors + head.json)")
    weights = folder / "head.safetensors"
    if weights.with_name(weights.name + ".sha256").exists() and not verify_digest(weights):
        raise UserError(f"{weights}: sha256 does not match head.safetensors.sha256 (corrupted file?)")
    meta = read_json(folder / "head.json")
    labels = meta.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(lab, str) and lab for lab in labels):
        raise UserError(f"{folder}/head.json: 'labels' must be a non-empty list of label names")
    tensors = read_tensors(weights, load_file)
    for key in ("weight", "bias"):
        if key not in tensors:
            raise UserError(f"{weights}: no {key!r} tensor (tensors: {', '.join(sorted(tensors)) or 'none'})")
    w, b = tensors["weight"], tensors["bias"]
    if w.ndim != 2 or w.shape[0] != len(labels) or w.shape[1] < 1 or tuple(b.shape) != (len(labels),):
        raise UserError(
            f"{folder}/head.json: {len(labels)} labels but head weight has shape {tuple(w.shape)}, "
            f"bias {tuple(b.shape)}"
        )
    head = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    return head, labels


def align_head(head, head_labels: list[str], task_labels: list[str], where: str):
    """Reorder the head's rows to the task's label order; a different label set is a UserError."""
    import torch

    if set(head_labels) != set(task_labels):
        raise UserError(f"{where}: head labels {head_labels} do not match the task's labels {task_labels}")
    idx = [head_labels.index(lab) for lab in task_labels]
    out = torch.nn.Linear(head.in_features, len(task_labels))
    with torch.no_grad():
        out.weight.copy_(head.weight[idx])
        out.bias.copy_(head.bias[idx])
    return out


def _fit_softmax(x, y, n_labels: int, l2: float):
    """Multinomial logistic regression by L-BFGS on full batches (deterministic, a few ms here)."""
    import torch
    import torch.nn.functional as F

    w = torch.zeros(n_labels, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_labels, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def fit_probe(embeddings: np.ndarray, targets: np.ndarray, n_labels: int, seed: int = 0, folds: int = 3):
    """A Linear head fitted on frozen embeddings: L2 strength picked by `folds`-fold CV, then refit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small problem: thread hand-offs would cost more than they save
    try:
        return _fit_probe(torch, embeddings, targets, n_labels, seed, folds)
    finally:
        torch.set_num_threads(threads)


def _fit_probe(torch, embeddings, targets, n_labels: int, seed: int, folds: int):
    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    n = len(y)
    best_l2, best_acc = PROBE_L2[0], -1.0
    if n >= 2 * folds:
        fold = np.random.default_rng(seed).permutation(n) % folds
        for l2 in PROBE_L2:
            correct = 0
            for k in range(folds):
                tr, te = torch.as_tensor(fold != k), torch.as_tensor(fold == k)
                w, b = _fit_softmax(x[tr], y[tr], n_labels, l2)
                correct += int(((x[te] @ w.T + b).argmax(1) == y[te]).sum())
            if correct / n > best_acc:
                best_l2, best_acc = l2, correct / n
    w, b = _fit_softmax(x, y, n_labels, best_l2)
    head = new_head(x.shape[1], n_labels)
    with torch.no_grad():
        head.weight.copy_(w.float())
        head.bias.copy_(b.float())
    return head
