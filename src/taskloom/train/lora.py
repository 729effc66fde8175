"""Train one LoRA adapter for a task, or for several tasks at once, top to bottom.

    taskloom train task.yaml --out runs/rt-sentiment
    taskloom train a.yaml b.yaml --out runs/joint          # one adapter, several tasks
    torchrun --nproc-per-node 2 -m taskloom train task.yaml --out runs/rt   # data parallel

Order of work: check everything the user gave (nothing is written before that), measure the frozen
base on each eval split, wrap the base with PEFT LoRA, run the loop (train/loop.py: length-aware
batches, checkpoints, resume, data parallel), measure again, then publish `out/adapter/` (PEFT files,
heads, task.json, model card) atomically, `out/steps.jsonl` and last `out/metrics.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from taskloom.artifacts import (
    publish_dir,
    sha256_file,
    staging_dir,
    write_digest,
    write_json,
    write_text,
)
from taskloom.errors import UserError
from taskloom.jsonfiles import read_jsonl
from taskloom.models.causal import CAUSAL_TARGET_MODULES, load_causal
from taskloom.models.encoder import load_encoder
from taskloom.models.registry import base_kind, resolve_base
from taskloom.tasks.types import TASK_TYPES
from taskloom.train import checkpoint, distributed, loop
from taskloom.train.card import model_card
from taskloom.train.device import resolve_device, resolve_precision
from taskloom.train.dropout import use_lane_dropout
from taskloom.train.encoder_task import EncoderTask
from taskloom.train.evaluate import load_split
from taskloom.train.generation_task import GenerationTask
from taskloom.train.report import write_train_report
from taskloom.train.sampling import steps_per_epoch

# LoRA on every linear layer of every transformer block: attention query, key, value and output, and
# both feed-forward layers (the pooler, unused by mean pooling, stays out). On the built-in tasks'
# validation splits this beats the attention projections alone (mean gain +0.043 against +0.034;
# bench/train_quality.py --variants targets=attention).
TARGET_MODULES = (
    r".*encoder\.layer\.\d+\.(attention\.(self\.(query|key|value)|output\.dense)|intermediate\.dense|output\.dense)"
)
LORA_DROPOUT = 0.05
# per base kind, when the user does not say: learning rate and tokens per text
# (SmolLM2 on chatterbot-gen: lr 2e-3, 96 tokens took the held-out answer loss down 29 % in 30 steps of 16)
# (encoder lr 1e-3: over three seeds the validation splits prefer 2e-3, mean gain +0.054 against +0.044;
# the change is pending its test run, BENCHMARKS.md "Training quality")
DEFAULTS = {"encoder": {"lr": 1e-3, "max_length": 64}, "causal_lm": {"lr": 2e-3, "max_length": 96}}


def _target_modules(kind: str) -> str:
    if kind == "encoder":
        return TARGET_MODULES
    return CAUSAL_TARGET_MODULES


def _check_rank(model, rank: int, pattern: str) -> list[str]:
    """The names of the layers LoRA will wrap; a rank above their smallest dimension is a UserError."""
    import torch

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and re.fullmatch(pattern, n)]
    if not names:
        raise UserError("base model: no attention or feed-forward layers to adapt (unknown architecture)")
    smallest = min(min(model.get_submodule(n).in_features, model.get_submodule(n).out_features) for n in names)
    if rank > smallest:
        raise UserError(f"--rank {rank}: larger than the adapted layers' dimension ({smallest})")
    return names


def _say(line: str) -> None:
    """A progress line on stderr (stdout stays for the metrics JSON)."""
    from rich.console import Console

    Console(stderr=True).print(line, highlight=False)


def _fingerprint(tasks, spec, base: str) -> str:
    """What makes two runs the same run: the tasks' data, the base and every option that changes training."""
    keep = spec.model_dump(exclude={"device", "checkpoint_every"})
    parts = [base, json.dumps(keep, sort_keys=True, default=str)]
    parts += [f"{t.name}:{t.type}:{sha256_file(t.train_path)}" for t in tasks]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def train_adapter(task, out, spec, progress: bool = True, resume: bool = False) -> dict:
    """Train a LoRA adapter for `task` into `out`; returns the metrics written to out/metrics.json."""
    return train_tasks([task], out, spec, progress=progress, resume=resume)


def train_tasks(tasks: list, out, spec, progress: bool = True, resume: bool = False) -> dict:
    """Train ONE LoRA adapter on every task of `tasks` (one task: a single-task adapter); returns metrics.

    Under torchrun every process runs this; rank 0 alone scores, writes and returns the metrics (the
    others return {})."""
    import torch
    from peft import LoraConfig, get_peft_model

    # ---- 1. check every input before anything is written --------------------------------------
    out = Path(out)
    if not tasks:
        raise UserError("train: give at least one task.yaml")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise UserError(f"train: a task is given twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))})")
    base = spec.base or tasks[0].base_model
    if spec.base is None and len({t.base_model for t in tasks}) > 1:
        raise UserError("train: the tasks name different base models; one adapter needs one base (use --base)")
    resolve_base(base)
    kind = base_kind(base)
    for t in tasks:
        wanted = TASK_TYPES[t.type].base_kind
        if wanted != kind:
            need = "a causal LM base (e.g. smollm2)" if wanted == "causal_lm" else "an encoder base (e.g. minilm)"
            raise UserError(f"task {t.name}: a {t.type} task needs {need}, not {base!r}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if not resume and checkpoint.has_checkpoints(out):
        raise UserError(
            f"--out {out}: holds checkpoints of an unfinished run; add --resume to continue it, or use a new --out"
        )
    lr = spec.lr or DEFAULTS[kind]["lr"]
    max_length = int(spec.max_length or DEFAULTS[kind]["max_length"])
    spec = spec.model_copy(update={"lr": lr, "max_length": max_length})
    world = distributed.world_from_env()
    device = distributed.start(world, resolve_device(spec.device))
    splits = {t.name: (load_split(t, "train"), load_split(t, "eval")) for t in tasks}
    if spec.max_train_rows:
        for t in tasks:
            rows = splits[t.name][0]
            if len(rows) > spec.max_train_rows:
                keep = sorted(random.Random(spec.seed).sample(range(len(rows)), spec.max_train_rows))
                splits[t.name] = ([rows[i] for i in keep], splits[t.name][1])
    fingerprint = _fingerprint(tasks, spec, base)
    works: list[EncoderTask] | list[GenerationTask]
    if kind == "encoder":
        tok, model = load_encoder(base)
        works = [EncoderTask(t, *splits[t.name], tok, max_length) for t in tasks]
    else:
        tok, model = load_causal(base)
        works = [GenerationTask(t, *splits[t.name], tok, max_length, spec.key_weight) for t in tasks]
    targets = _target_modules(kind)
    layers = _check_rank(model, spec.rank, targets)

    # ---- 2. seed everything; the frozen base on each eval split --------------------------------
    random.seed(spec.seed)
    np.random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    model.to(device)
    say = _say if progress and world.main else (lambda *_: None)
    base_scores, base_losses = {}, {}
    for w in works:
        w.prepare(model, spec.seed)  # classification: the linear probe (the baseline and the head's start)
        if world.main:
            base_scores[w.name], base_losses[w.name] = w.evaluate(model)
            probe = " (linear probe on the frozen encoder)" if w.head is not None else ""
            s = base_scores[w.name]
            say(f"{w.name}: base {s['metric']} {s['value']:.4f} on {len(w.eval_rows)} eval rows{probe}")

    # ---- 3. LoRA on the base; heads to the device ----------------------------------------------
    if not spec.dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=LORA_DROPOUT if spec.dropout else 0.0,
        target_modules=targets,
        bias="none",
    )
    with warnings.catch_warnings():  # a transformers deprecation notice raised inside PEFT
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model, config)
    model.peft_config["default"].base_model_name_or_path = base  # the name taskloom resolves, not this machine's path
    if device == "cpu":
        use_lane_dropout(model)  # torch's CPU masks cost a random draw per element (train/dropout.py)
    for w in works:
        for m in w.modules().values():
            m.to(device)
    trainable = sum(p.numel() for p in loop.trainable_tensors(model, works).values())
    per_epoch = steps_per_epoch([len(w.lengths) for w in works], spec.batch_size)
    total_steps = spec.max_steps or spec.epochs * per_epoch

    # ---- 4. the loop (the adapter lands in a hidden folder inside `out` until it is published) --
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = None
    try:
        label = names[0] if len(names) == 1 else f"{len(names)} tasks"
        result = loop.run(
            model,
            works,
            spec,
            out,
            total_steps=total_steps,
            per_epoch=per_epoch,
            fingerprint=fingerprint,
            world=world,
            device=device,
            resume=resume,
            progress=progress,
            label=label,
        )
        if not world.main:
            distributed.stop(world)
            return {}

        # ---- 5. the tuned model on each eval split; publish -----------------------------------
        model.eval()
        per_task = {}
        for w in works:
            tuned, tuned_loss = w.evaluate(model)
            b = base_scores[w.name]
            up = b.get("higher_is_better", True)
            say(f"{w.name}: tuned {tuned['metric']} {tuned['value']:.4f} after {total_steps} steps")
            m = {
                "task": w.name,
                "type": w.type,
                "metric": b["metric"],
                "base": round(b["value"], 6),
                "tuned": round(tuned["value"], 6),
                "gain": round((tuned["value"] - b["value"]) * (1 if up else -1), 6),  # > 0: better, whatever the metric
                "base_eval_loss": round(base_losses[w.name], 6),
                "eval_loss": round(tuned_loss, 6),
                "train_rows": len(w.lengths),
                "eval_rows": len(w.eval_rows),
            }
            if not up:
                m["higher_is_better"] = False
                m["drop"] = round((b["value"] - tuned["value"]) / b["value"], 6)  # e.g. 0.3: the answer loss fell 30 %
            for extra in ("spearman", "recall_at_1", "perplexity"):
                if extra in b:
                    m[f"base_{extra}"] = round(b[extra], 6)
                    m[f"tuned_{extra}"] = round(tuned[extra], 6)
            if "confusion" in tuned:  # the eval split's confusion matrix (KFP ClassificationMetrics)
                m["confusion"] = tuned["confusion"]
            per_task[w.name] = m
        losses = result["losses"]
        shared = {
            "train_seconds": round(result["seconds"], 2),
            "train_rows": sum(len(w.lengths) for w in works),
            "steps": total_steps,
            "epochs": round(total_steps / per_epoch, 4),
            "final_loss": round(float(np.mean(losses[-max(1, min(10, len(losses))) :])), 6),
            "tokens": result["tokens"],
            "tokens_per_s": round(result["tokens"] / result["seconds"], 1) if result["seconds"] else 0.0,
            "resumed_from_step": result["resumed_from"],
            "base_model": base,
            "rank": spec.rank,
            "alpha": spec.alpha,
            "lr": spec.lr,
            "batch_size": spec.batch_size,
            "sampling": spec.sampling,
            "max_length": max_length,
            "precision": resolve_precision(device, spec.precision),
            "trainable_params": trainable,
            "lora_layers": len(layers),
            "seed": spec.seed,
            "device": device,
            "world_size": world.size,
        }
        if len(works) == 1:
            metrics = {**per_task[names[0]], **shared}
        else:
            metrics = {
                "task": "+".join(names),
                "type": "multitask",
                "tasks": per_task,
                "temperature": spec.temperature,
                "mixing": spec.mixing,
                **shared,
            }

        stage = staging_dir(out / "adapter")
        with warnings.catch_warnings():  # transformers' own deprecation notice inside PEFT's save
            warnings.simplefilter("ignore", FutureWarning)
            model.save_pretrained(str(stage), save_embedding_layers=False)  # embeddings are never adapted
        write_digest(stage / "adapter_model.safetensors")
        write_digest(stage / "adapter_config.json")
        for w in works:
            w.save(stage, multi=len(works) > 1)
        info = {"task": metrics["task"], "type": metrics["type"], "base": base}
        if len(works) == 1:
            info["labels"] = tasks[0].labels
        else:
            info["tasks"] = [{"task": t.name, "type": t.type, "labels": t.labels} for t in tasks]
        write_json(stage / "task.json", info)
        write_text(stage / "README.md", model_card(tasks, metrics, targets))
        publish_dir(stage, out / "adapter")
        os.replace(out / loop.LOG_NAME, out / "steps.jsonl")
        write_digest(out / "steps.jsonl")
        write_train_report(out / "report.html", metrics, read_jsonl(out / "steps.jsonl"))
        write_json(out / "metrics.json", metrics)
        checkpoint.clear(out)
        distributed.stop(world)
        return metrics
    except BaseException as e:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if world.main and not checkpoint.has_checkpoints(out):
            # nothing to resume from: leave no trace of this run (a resumable run keeps its log)
            (out / loop.LOG_NAME).unlink(missing_ok=True)
            if created and out.exists() and not any(out.iterdir()):
                out.rmdir()
        if isinstance(e, KeyboardInterrupt) and world.main and checkpoint.has_checkpoints(out):
            say(f"interrupted; continue with --resume (checkpoints in {out / checkpoint.FOLDER})")
        raise
