"""The training loop, written out: the same steps for every task type, one task or many, one process
or a torchrun world, CPU or CUDA.

Each step: the plan (train/sampling.py) names the rows; every process takes its share of them
(train/distributed.py); each task's loss is weighted by its share of the step and of the rows; one
backward; gradients summed over the world, clipped; AdamW with linear warm-up and decay (the
transformers schedule, so runs compare step for step with a Trainer's). Every step
appends one JSON line to the run's log; every `checkpoint_every` steps rank 0 writes an atomic
checkpoint (train/checkpoint.py). On `resume`, the newest whole checkpoint is loaded and the plan is
replayed to its step, so the run ends where an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from taskloom.errors import UserError
from taskloom.jsonfiles import read_jsonl
from taskloom.train import checkpoint, distributed
from taskloom.train.device import autocast, frozen_in_bf16
from taskloom.train.sampling import plan

WEIGHT_DECAY = 0.01
WARMUP_SHARE = 0.06
MAX_GRAD_NORM = 1.0
LOG_NAME = ".steps.partial.jsonl"  # the live log; published as steps.jsonl when the run ends


def _bar(label: str, total: int, start: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn(f"[bold]train {label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    bar.start()
    return bar, bar.add_task("train", total=total, completed=start, loss=float("nan"), tps=0.0)


def trainable_tensors(model, works) -> dict:
    """Every tensor the optimizer moves, by a stable name: the adapter's, then each task head's."""
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for w in works:
        for prefix, module in w.modules().items():
            named.update({f"{prefix}.{n}": p for n, p in module.named_parameters()})
    return named


def run(
    model,
    works,
    spec,
    out: Path,
    *,
    total_steps: int,
    per_epoch: int,
    fingerprint: str,
    world,
    device: str,
    resume: bool = False,
    progress: bool = True,
    label: str = "",
) -> dict:
    """Train `model` (+ the works' heads) for `total_steps`; returns {"losses", "seconds", "tokens", "resumed_from"}."""
    import torch

    named = trainable_tensors(model, works)
    params = list(named.values())
    # the usual AdamW recipe: matrices decay, biases (1-D tensors) do not
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=spec.lr, foreach=True)
    # linear warm-up from 0 (the first step only primes Adam's moments), then linear decay to 0
    warmup = max(1, int(WARMUP_SHARE * total_steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: s / warmup if s < warmup else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
    )
    lengths = [w.lengths for w in works] if spec.sampling == "grouped" else None
    stream = plan([len(w.lengths) for w in works], spec.batch_size, spec.seed, spec.temperature, spec.mixing, lengths)
    log_path = Path(out) / LOG_NAME

    # ---- where to start: step 0, or the newest whole checkpoint ---------------------------------
    start = 0
    if resume:
        found = checkpoint.latest(out, fingerprint)
        if found is not None:
            checkpoint.load(found["dir"], named, optimizer, schedule)
            start = found["step"]
            for _ in range(start):
                next(stream)
            if world.main:
                log_path.write_bytes((found["dir"] / "steps.jsonl").read_bytes())
    if start == 0 and world.main:
        log_path.write_text("")
    losses = [row["loss"] for row in read_jsonl(log_path)] if world.main else []

    bar = _bar(label, total_steps, start) if progress and world.main else None
    model.train()
    seconds, tokens = 0.0, 0
    try:
        with (
            open(log_path, "a", encoding="utf-8") if world.main else open("/dev/null", "w") as log,
            frozen_in_bf16(model, device, spec.precision),
        ):
            for step in range(start + 1, total_steps + 1):
                entries = next(stream)
                t0 = time.perf_counter()
                mine = [(i, distributed.shard(idx, world), share) for i, idx, share in entries]
                # global units per entry, so each process's part of the loss is weighted by its rows
                local_units = [works[i].units(idx) for i, idx, _ in mine]
                local_tokens = sum(works[i].tokens(idx) for i, idx, _ in mine)
                totals = distributed.global_sum([*local_units, float(local_tokens)], world)
                loss = None
                with autocast(device, spec.precision):
                    for (i, idx, share), units, total in zip(mine, local_units, totals):
                        if not idx:
                            continue
                        part = works[i].loss(model, idx) * (share * units / total)
                        loss = part if loss is None else loss + part
                if loss is not None:
                    loss.backward()
                distributed.sum_gradients(params, world)
                torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                lr = optimizer.param_groups[0]["lr"]  # the rate this step used
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss = distributed.global_sum([float(loss.detach()) if loss is not None else 0.0], world)[0]
                if not math.isfinite(step_loss):
                    raise UserError(f"step {step}: the loss is {step_loss} (diverged); lower --lr")
                took = time.perf_counter() - t0
                seconds += took
                tokens += int(totals[-1])
                losses.append(step_loss)
                record = {
                    "step": step,
                    "epoch": (step - 1) // per_epoch,
                    "loss": round(step_loss, 6),
                    "lr": lr,
                    "tokens": int(totals[-1]),
                    "tokens_per_s": round(totals[-1] / took, 1),
                    "examples_per_s": round(sum(len(idx) for _, idx, _ in entries) / took, 2),
                }
                if len(works) > 1:
                    record["tasks"] = [works[i].name for i, _, _ in entries]
                log.write(json.dumps(record) + "\n")
                log.flush()
                if bar is not None:
                    bar[0].update(bar[1], advance=1, loss=step_loss, tps=tokens / seconds)
                if spec.checkpoint_every and step % spec.checkpoint_every == 0 and step < total_steps:
                    failure = None
                    if world.main:
                        try:
                            checkpoint.save(out, step, fingerprint, named, optimizer, schedule, log_path)
                        except UserError as e:
                            failure = e
                    if distributed.broadcast_flag(failure is not None, world):
                        raise failure or UserError(f"step {step}: rank 0 could not write the checkpoint")
    finally:
        if bar is not None:
            bar[0].stop()
    return {"losses": losses, "seconds": seconds, "tokens": tokens, "resumed_from": start}
