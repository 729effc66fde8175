"""Merges that choose their coefficients by looking at data: `greedy_soup` and `self_positioning`.

Both end in the exact streaming merge: the search only decides the weights wᵢ, then
greedy_soup writes `linear` over the chosen inputs and self_positioning writes `task_arithmetic`
with the learned coefficients, so the output obeys the same algebra as every other method.

Probe rows come from each task's TRAIN split (a seeded sample, the same count per task), never from
the eval split the promotion gate scores, so the gate stays an honest held-out check.

- greedy_soup (Wortsman et al., 2022): rank the inputs by their own probe score, start a soup with
  the best, add each next one only if the soup's mean probe score does not drop.
- self_positioning: W(λ) = W₀ + Σ λᵢΔᵢ with λ learned by Adam on the task losses over a probe set
  balanced across tasks (the training objectives of taskloom.train), each relative to its value at
  the start so every task weighs the same, starting from the weights given in merge.yaml. Task vectors of the touched tensors are held in memory for this
  search (fine for adapters on encoders; the final write still streams).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from taskloom.errors import UserError
from taskloom.merge.weights import KeyMatcher

# score(tok, model) -> {task: metric}; higher is better.
Scorer = Callable[[object, object], dict]


@dataclass
class Probe:
    """One task's probe: its spec, a seeded sample of its train rows, its head (classification)."""

    task: object
    rows: list[dict]
    head: object | None


def load_probes(task_paths: list[Path], inputs, rows_per_task: int, seed: int) -> list[Probe]:
    """Probes for the merge's tasks; a classification task takes its head from the input trained on it."""
    from taskloom.specs import load_task
    from taskloom.train.evaluate import check_trainable_type, load_split
    from taskloom.train.heads import align_head, has_head, load_head

    if not task_paths:
        raise UserError("tasks: this method evaluates candidates: list the task.yaml files of the adapters under `tasks:`")
    probes = []
    for path in task_paths:
        task = load_task(path)
        check_trainable_type(task)
        rows = load_split(task, "train")
        rows = random.Random(f"{seed}:{task.name}").sample(rows, min(rows_per_task, len(rows)))
        head = None
        if task.type == "classification":
            owner = next((inp for inp in inputs if inp.task == task.name and has_head(inp.folder)), None)
            if owner is None:
                raise UserError(f"{path}: classification task {task.name!r}: no input adapter has its head (task.json + head.safetensors)")
            raw, labels = load_head(owner.folder)
            head = align_head(raw, labels, task.labels, str(owner.folder / "head.json"))
            head.requires_grad_(False)
        probes.append(Probe(task, rows, head))
    return probes


def probe_scorer(probes: list[Probe]) -> Scorer:
    """The default scorer: each task's metric (taskloom.train.evaluate) on its probe rows."""
    from taskloom.train.evaluate import score_encoder

    def score(tok, model) -> dict:
        return {p.task.name: float(score_encoder(p.task, tok, model, rows=p.rows, head=p.head)["value"]) for p in probes}

    return score


class TaskVectors:
    """W₀ and every input's Δ for the tensors any input touches, keyed by the encoder's parameter names."""

    def __init__(self, base, inputs, model):
        from taskloom.merge.methods import Delta

        params = dict(model.named_parameters())
        matcher = KeyMatcher(params)
        keys = sorted(set().union(*(inp.keys() for inp in inputs)))
        self.names, self.w0, self.deltas = [], {}, []
        for key in keys:
            name = matcher.find(key)
            if name is None:
                raise UserError(f"base model: tensor {key} has no parameter in the loaded encoder")
            self.names.append(name)
            self.w0[name] = base.get(key).float()
        for inp in inputs:
            per = {}
            for key, name in zip(keys, self.names):
                if key in inp.keys():
                    per[name] = Delta(lambda k=key, n=name: inp.delta(k, self.w0[n]), tuple(self.w0[name].shape), inp.label, key).get()
            self.deltas.append(per)

    def state(self, coeffs) -> dict:
        """{parameter name: W₀ + Σ cᵢΔᵢ}; differentiable in `coeffs` when it is a tensor that requires grad."""
        out = {}
        for name in self.names:
            w = self.w0[name]
            for c, per in zip(coeffs, self.deltas):
                if name in per:
                    w = w + c * per[name]
            out[name] = w
        return out


def _load(model, state: dict) -> None:
    import torch

    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state.items():
            params[name].copy_(value)


def greedy_soup(tv: TaskVectors, tok, model, score: Scorer) -> tuple[list[float], dict]:
    """(weights: 1 for the soup's members, 0 for the others; a record of every candidate tried)."""
    n = len(tv.deltas)

    def mean_score(members: list[int]) -> tuple[float, dict]:
        coeffs = [1.0 / len(members) if i in members else 0.0 for i in range(n)]
        _load(model, tv.state(coeffs))
        scores = score(tok, model)
        return sum(scores.values()) / len(scores), scores

    singles = [mean_score([i]) for i in range(n)]
    order = sorted(range(n), key=lambda i: -singles[i][0])
    soup, best = [order[0]], singles[order[0]][0]
    tried = [{"members": [i], "mean": s, "scores": sc} for i, (s, sc) in enumerate(singles)]
    for i in order[1:]:
        mean, scores = mean_score(soup + [i])
        kept = mean >= best
        tried.append({"members": sorted(soup + [i]), "mean": mean, "scores": scores, "kept": kept})
        if kept:
            soup, best = soup + [i], mean
    _load(model, tv.w0)
    return [1.0 if i in soup else 0.0 for i in range(n)], {"soup": sorted(soup), "mean_score": best, "tried": tried}


def _embed(model, params: dict, tok, texts: list[str], max_length: int):
    import torch.nn.functional as F
    from torch.func import functional_call

    from taskloom.models.encoder import mean_pool

    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    out = functional_call(model, params, args=(), kwargs=dict(batch))
    return F.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]), dim=-1)


def _task_loss(probe: Probe, rows: list[dict], model, params, tok, max_length: int):
    """The task's training objective on a batch of its probe rows."""
    import torch

    from taskloom.train.objectives import classification_loss, cosent_loss, info_nce_loss

    task = probe.task
    if task.type == "classification":
        gold = torch.tensor([task.labels.index(r["label"]) for r in rows])
        return classification_loss(probe.head(_embed(model, params, tok, [r["text"] for r in rows], max_length)), gold)
    if task.type == "pair_similarity":
        emb = _embed(model, params, tok, [r["text_a"] for r in rows] + [r["text_b"] for r in rows], max_length)
        a, b = emb[: len(rows)], emb[len(rows) :]
        return cosent_loss((a * b).sum(-1), torch.tensor([float(r["score"]) for r in rows]))
    docs = list(dict.fromkeys([r["positive"] for r in rows] + [n for r in rows for n in r.get("negatives") or []]))
    q = _embed(model, params, tok, [r["query"] for r in rows], max_length)
    d = _embed(model, params, tok, docs, max_length)
    return info_nce_loss(q, d, torch.tensor([docs.index(r["positive"]) for r in rows]))


def _reference_losses(probes: list[Probe], model, params, tok, p) -> dict[str, float]:
    """Each task's loss at the starting coefficients: its mean over the probe rows in batches of
    `batch_rows` (the batch size of the search, so in-batch negatives count the same)."""
    import torch

    out = {}
    with torch.no_grad():
        for probe in probes:
            chunks = [probe.rows[i : i + p.batch_rows] for i in range(0, len(probe.rows), p.batch_rows)]
            chunks = [c for c in chunks if len(c) >= 2] or [probe.rows]
            out[probe.task.name] = sum(float(_task_loss(probe, c, model, params, tok, p.max_length)) for c in chunks) / len(chunks)
    return out


def self_positioning(tv: TaskVectors, tok, model, probes: list[Probe], init: list[float], p) -> tuple[list[float], dict]:
    """(learned coefficients λ, a record of the loss and λ per step).

    The objective is the mean over tasks of each task's loss relative to its loss at the start, so a
    task whose objective has a larger scale (InfoNCE, CoSENT) does not outvote a classification task."""
    import torch

    model.eval()  # no dropout: the loss is a function of λ alone
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    frozen.update({k: v for k, v in model.named_buffers()})
    lam = torch.tensor(init, dtype=torch.float32, requires_grad=True)
    reference = _reference_losses(probes, model, {**frozen, **tv.state(lam.detach())}, tok, p)
    opt = torch.optim.Adam([lam], lr=p.lr)
    rng = random.Random(p.seed)
    history = []
    for step in range(p.steps):
        params = {**frozen, **tv.state(lam)}
        losses = {}
        for probe in probes:  # balanced: the same number of rows from every task, each task's mean loss
            rows = rng.sample(probe.rows, min(p.batch_rows, len(probe.rows)))
            losses[probe.task.name] = _task_loss(probe, rows, model, params, tok, p.max_length)
        loss = sum(v / max(reference[k], 1e-8) for k, v in losses.items()) / len(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"step": step, "loss": float(loss.detach()), "lambda": [round(float(x), 6) for x in lam.detach()],
                        "task_losses": {k: float(v.detach()) for k, v in losses.items()}})
    return [float(x) for x in lam.detach()], {"init": list(init), "reference_losses": reference, "steps": history}


def run_search(method, spec, inputs, base, base_dir, params, score: Scorer | None) -> tuple[list[float], dict]:
    """Load the encoder and the probes, search, return (weights for the final exact merge, report)."""
    import torch

    from taskloom.models.encoder import load_encoder

    tok, model = load_encoder(base_dir)
    with torch.no_grad():
        tv = TaskVectors(base, inputs, model)
    if method.name == "greedy_soup":
        if score is None:
            score = probe_scorer(load_probes(spec.task_paths(), inputs, params.probe_rows, params.seed))
        with torch.no_grad():
            return greedy_soup(tv, tok, model, score)
    probes = load_probes(spec.task_paths(), inputs, params.probe_rows, params.seed)
    torch.manual_seed(params.seed)
    return self_positioning(tv, tok, model, probes, [a.weight for a in spec.adapters], params)
