"""Merges that choose their coefficients by looking at data: `greedy_soup` and `self_positioning`.

Both end in the exact streaming merge: the search only decides the weights wᵢ, then
greedy_soup writes `linear` over the chosen inputs and self_positioning writes `task_arithmetic`
with the learned coefficients, so the output obeys the same algebra as every other method.

Probe rows come from each task's VALIDATION split when it has one (rows no adapter was fitted on),
else from its train split (a seeded sample, the same count per task); never from the eval split the
promotion gate scores, so the gate stays an honest held-out check.

- greedy_soup (Wortsman et al., 2022): rank the inputs by their own probe score, start a soup with
  the best, add each next one only if the soup's mean probe score does not drop.
- self_positioning: W(λ) = W₀ + Σ λᵢ,g Δᵢ with λ learned by Adam on a probe set balanced across
  tasks, starting from the weights given in merge.yaml. One coefficient per input and tensor g by
  default (`granularity`: per input and layer, or per input). The objective is each task's loss
  relative to its value at the start, so every task weighs the same:
  - `task_loss` (default): each task type's training objective (`TaskType.loss`) on the probe rows
    (for the built-in types: cross-entropy through the head, cosine-MSE for pairs, InfoNCE for retrieval);
  - `distill`: on the probe texts of task t, the merged model's embeddings should be those of t's
    own adapter (squared distance of the unit vectors): keep what each adapter does on its own
    inputs, labels unused (no classification head needed).
  On the built-in tasks both beat task arithmetic at its probe-chosen λ, task_loss by more
  (BENCHMARKS.md). Train-split probe rows are rows the adapters were fitted on, so their scores run
  higher than eval scores for every method; validation rows do not have that bias.
  Task vectors of the touched tensors are held in memory for this search (fine for adapters on
  encoders; the final write still streams).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from taskloom.errors import UserError
from taskloom.merge.methods import Delta
from taskloom.merge.weights import KeyMatcher
from taskloom.models.encoder import load_encoder, mean_pool
from taskloom.models.heads import align_head, has_head, load_head
from taskloom.specs import TaskSpec, load_task
from taskloom.tasks.types import TASK_TYPES
from taskloom.train.evaluate import check_trainable_type, load_split, score_encoder

# score(tok, model) -> {task: metric}; higher is better.
Scorer = Callable[[object, object], dict]


@dataclass
class Probe:
    """One task's probe: its spec, a seeded sample of its validation (else train) rows, its head
    (classification)."""

    task: TaskSpec
    rows: list[dict]
    head: Any  # the task's torch Linear head (classification), else None
    split: str  # where the rows came from: probe_split(task)


def load_probes(task_paths: list[Path], inputs, rows_per_task: int, seed: int, heads: bool = True) -> list[Probe]:
    """Probes for the merge's tasks; a classification task takes its head from the input trained on it
    (`heads`: the head is required; otherwise it is taken when there is one)."""
    if not task_paths:
        raise UserError(
            "tasks: this method evaluates candidates: list the task.yaml files of the adapters under `tasks:`"
        )
    probes = []
    for path in task_paths:
        task = load_task(path)
        check_trainable_type(task)
        split = probe_split(task)
        rows = load_split(task, split)
        rows = random.Random(f"{seed}:{task.name}").sample(rows, min(rows_per_task, len(rows)))
        head = None
        if TASK_TYPES[task.type].labelled:
            owner = next((inp for inp in inputs if inp.task == task.name and has_head(inp.folder)), None)
            if owner is None and not heads:
                probes.append(Probe(task, rows, None, split))
                continue
            if owner is None:
                raise UserError(
                    f"{path}: classification task {task.name!r}: no input adapter has its head (task.json + head.safetensors)"
                )
            raw, labels = load_head(owner.folder)
            assert task.labels is not None  # TaskSpec requires labels for a labelled type
            head = align_head(raw, labels, task.labels, str(owner.folder / "head.json"))
            head.requires_grad_(False)
        probes.append(Probe(task, rows, head, split))
    return probes


def probe_split(task: TaskSpec) -> str:
    """validation when the task has that split (held out from every adapter), else train."""
    return "validation" if "validation" in task.splits else "train"


def probe_scorer(probes: list[Probe]) -> Scorer:
    """The default scorer: each task's metric (taskloom.train.evaluate) on its probe rows."""

    def score(tok, model) -> dict:
        return {
            p.task.name: float(score_encoder(p.task, tok, model, rows=p.rows, head=p.head)["value"]) for p in probes
        }

    return score


class TaskVectors:
    """W₀ and every input's Δ for the tensors any input touches, keyed by the encoder's parameter names."""

    def __init__(self, base, inputs, model):
        params = dict(model.named_parameters())
        matcher = KeyMatcher(params)
        keys = sorted(set().union(*(inp.keys() for inp in inputs)))
        self.keys = keys  # base keys, in the order of `names`
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
                    per[name] = Delta(
                        lambda k=key, n=name, inp=inp: inp.delta(k, self.w0[n]),
                        tuple(self.w0[name].shape),
                        inp.label,
                        key,
                    ).get()
            self.deltas.append(per)

    def state(self, coeffs, groups: dict[str, int] | None = None) -> dict:
        """{parameter name: W₀ + Σ cᵢΔᵢ}; differentiable in `coeffs` when it is a tensor that requires grad.
        With `groups` ({name: column}), `coeffs` is a matrix (inputs × groups) and tensor `name` uses
        column groups[name]."""
        out = {}
        for name in self.names:
            w = self.w0[name]
            for c, per in zip(coeffs, self.deltas):
                if name in per:
                    w = w + (c if groups is None else c[groups[name]]) * per[name]
            out[name] = w
        return out

    def groups(self, granularity: str) -> tuple[list[str], dict[str, int]]:
        """(group labels, {parameter name: group index}) for one coefficient per input and group:
        "task" one group, "layer" one per encoder layer (`layer.<i>.` in the name), "tensor" one per tensor."""

        def label(name: str) -> str:
            if granularity == "task":
                return "all"
            if granularity == "layer":
                m = re.search(r"layers?\.(\d+)\.", name)
                return f"layer {m.group(1)}" if m else "other"
            return name

        labels = list(dict.fromkeys(label(n) for n in self.names))
        return labels, {n: labels.index(label(n)) for n in self.names}


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
        mean, scores = mean_score([*soup, i])
        kept = mean >= best
        tried.append({"members": sorted([*soup, i]), "mean": mean, "scores": scores, "kept": kept})
        if kept:
            soup, best = [*soup, i], mean
    _load(model, tv.w0)
    return [1.0 if i in soup else 0.0 for i in range(n)], {"soup": sorted(soup), "mean_score": best, "tried": tried}


def _embed(model, params: dict, tok, texts: list[str], max_length: int):
    import torch.nn.functional as F
    from torch.func import functional_call

    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    out = functional_call(model, params, args=(), kwargs=dict(batch))
    return F.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]), dim=-1)


def _task_loss(probe: Probe, rows: list[dict], model, params, tok, max_length: int):
    """The task's training objective (its task type's `loss`) on a batch of its probe rows."""
    task = probe.task
    return TASK_TYPES[task.type].loss(
        lambda texts: _embed(model, params, tok, texts, max_length), rows, task, probe.head
    )


def probe_texts(probe: Probe) -> list[str]:
    """The distinct texts of a probe's rows (both sides of pairs, queries and their positives)."""
    fields = TASK_TYPES[probe.task.type].text_fields
    return list(dict.fromkeys(r[f] for f in fields for r in probe.rows))


class _Objective(Protocol):
    """What the λ search needs of an objective; a batch is row indices (_Distill) or rows (_TaskLoss)."""

    def batches(self, name: str, rng: random.Random) -> Any: ...
    def chunks(self, name: str) -> Any: ...
    def loss(self, name: str, params, batch: Any) -> Any: ...


def _objective(p, tv, probes, inputs, model, frozen, tok) -> _Objective:
    if p.objective == "distill":
        return _Distill(tv, probes, inputs, model, frozen, tok, p)
    return _TaskLoss(probes, model, tok, p)


class _Distill:
    """Objective `distill`: for task t, the mean squared distance between the merged model's unit
    embeddings of t's probe texts and those of t's own adapter (W₀ + the Δ of the inputs trained on t)."""

    def __init__(self, tv, probes, inputs, model, frozen, tok, p):
        import torch

        self.texts, self.targets, self.p, self.tok, self.model = {}, {}, p, tok, model
        for probe in probes:
            name = probe.task.name
            own = [1.0 if inp.task == name else 0.0 for inp in inputs]
            if not any(own):
                raise UserError(
                    f"tasks: {name}: no input adapter was trained on it (task.json), so objective "
                    "distill has nothing to match; list only the adapters' tasks or use objective: task_loss"
                )
            texts = probe_texts(probe)
            with torch.no_grad():
                params = {**frozen, **tv.state(own)}
                self.targets[name] = torch.cat(
                    [_embed(model, params, tok, texts[i : i + 64], p.max_length) for i in range(0, len(texts), 64)]
                )
            self.texts[name] = texts

    def loss(self, name: str, params, idx: list[int]):
        e = _embed(self.model, params, self.tok, [self.texts[name][i] for i in idx], self.p.max_length)
        return (e - self.targets[name][idx]).pow(2).sum(-1).mean()

    def batches(self, name: str, rng: random.Random) -> list[int]:
        n = len(self.texts[name])
        return rng.sample(range(n), min(self.p.batch_rows, n))

    def chunks(self, name: str) -> list[list[int]]:
        n = len(self.texts[name])
        return [list(range(i, min(i + self.p.batch_rows, n))) for i in range(0, n, self.p.batch_rows)]


class _TaskLoss:
    """Objective `task_loss`: each task's training objective on batches of its probe rows."""

    def __init__(self, probes, model, tok, p):
        self.probes, self.model, self.tok, self.p = {pr.task.name: pr for pr in probes}, model, tok, p

    def loss(self, name: str, params, rows: list[dict]):
        return _task_loss(self.probes[name], rows, self.model, params, self.tok, self.p.max_length)

    def batches(self, name: str, rng: random.Random) -> list[dict]:
        rows = self.probes[name].rows
        return rng.sample(rows, min(self.p.batch_rows, len(rows)))

    def chunks(self, name: str) -> list[list[dict]]:
        """The probe rows in batches of `batch_rows` (the batch size of the search, so in-batch
        negatives count the same)."""
        rows = self.probes[name].rows
        chunks = [rows[i : i + self.p.batch_rows] for i in range(0, len(rows), self.p.batch_rows)]
        return [c for c in chunks if len(c) >= 2] or [rows]


def self_positioning(
    tv: TaskVectors, tok, model, probes: list[Probe], init: list[float], p, inputs=None
) -> tuple[list[float], dict]:
    """(each input's mean learned coefficient, a record: the coefficients per tensor, loss per step).

    The objective is the mean over tasks of each task's loss relative to its loss at the start (its
    mean over all probe rows), so a task whose objective has a larger scale does not outvote another."""
    import torch

    model.eval()  # no dropout: the loss is a function of λ alone
    frozen = {k: v.detach() for k, v in model.named_parameters()}
    frozen.update({k: v for k, v in model.named_buffers()})
    labels, groups = tv.groups(p.granularity)
    lam = torch.tensor([[float(w)] * len(labels) for w in init], dtype=torch.float32, requires_grad=True)
    objective = _objective(p, tv, probes, inputs, model, frozen, tok)
    names = [probe.task.name for probe in probes]
    with torch.no_grad():
        params = {**frozen, **tv.state(lam.detach(), groups)}
        reference = {
            n: sum(float(objective.loss(n, params, c)) for c in objective.chunks(n)) / len(objective.chunks(n))
            for n in names
        }
    opt = torch.optim.Adam([lam], lr=p.lr)
    rng = random.Random(p.seed)
    history = []
    for step in range(p.steps):
        params = {**frozen, **tv.state(lam, groups)}
        # balanced: the same number of rows from every task, each task's mean loss
        losses = {n: objective.loss(n, params, objective.batches(n, rng)) for n in names}
        loss = sum(v / max(reference[k], 1e-8) for k, v in losses.items()) / len(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(
            {
                "step": step,
                "loss": float(loss.detach()),
                "lambda": [round(float(x), 6) for x in lam.detach().mean(1)],
                "task_losses": {k: float(v.detach()) for k, v in losses.items()},
            }
        )
    final = lam.detach()
    per_tensor = {key: [float(x) for x in final[:, groups[name]]] for key, name in zip(tv.keys, tv.names)}
    record = {
        "init": list(init),
        "objective": p.objective,
        "granularity": p.granularity,
        "reference_losses": reference,
        "steps": history,
        "coefficients": {label: [round(float(x), 6) for x in final[:, g]] for g, label in enumerate(labels)},
        "tensor_weights": per_tensor,
    }
    return [float(x) for x in final.mean(1)], record


def run_search(method, spec, inputs, base, base_dir, params, score: Scorer | None) -> tuple[list[float], dict]:
    """Load the encoder and the probes, search, return (weights for the final exact merge, report)."""
    import torch

    tok, model = load_encoder(base_dir)
    with torch.no_grad():
        tv = TaskVectors(base, inputs, model)
    if method.name == "greedy_soup":
        probes = None
        if score is None:
            probes = load_probes(spec.task_paths(), inputs, params.probe_rows, params.seed)
            score = probe_scorer(probes)
        with torch.no_grad():
            weights, record = greedy_soup(tv, tok, model, score)
    else:
        probes = load_probes(
            spec.task_paths(), inputs, params.probe_rows, params.seed, heads=params.objective == "task_loss"
        )
        torch.manual_seed(params.seed)
        weights, record = self_positioning(tv, tok, model, probes, [a.weight for a in spec.adapters], params, inputs)
    if probes is not None:  # a caller's own scorer has no probes to name
        record["probe_splits"] = {p.task.name: p.split for p in probes}
    return weights, record
