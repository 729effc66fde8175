"""LoRA training speed: taskloom's trainer vs Hugging Face `Trainer` + PEFT, same model, data and seed.

    .venv/bin/python bench/train_throughput.py            # --examples 1024 --repeats 2 --threads 1

Task: rt-sentiment (Rotten Tomatoes reviews, fresh/rotten), exported with `export_task` into a
temporary folder: `--examples` training reviews and `--eval-examples` held-out ones. Both sides train
the same model for one epoch: MiniLM (all-MiniLM-L6-v2) with LoRA r 8, alpha 16, taskloom's
`LORA_DROPOUT` on its `TARGET_MODULES`, mean pooling over real tokens, L2 normalisation, and a linear
head; batch 32, max_length 64, AdamW at the same learning rate, weight decay 0.01, linear warm-up
(the same number of steps) then linear decay, gradient clipping at 1.0, the same seed.

The head: taskloom starts its head from a logistic-regression probe on the frozen embeddings
(`fit_probe_head`). The baseline gets the very same head (same function, same rows, same seed), so
both start from the same model and any difference in eval loss comes from the training itself; a
freshly initialised head would hand the baseline a handicap that has nothing to do with speed.

The baseline is the strong usual setting: the training set tokenized once (truncation at
max_length, no padding), `DataCollatorWithPadding` padding each batch to its longest row,
`use_cpu=True`, `save_strategy="no"`, `report_to=[]`. Both sides train on the very same batches in
the same order: taskloom's sampler is a plain seeded shuffle per epoch (what the Trainer's random
sampler does), and the Trainer is handed that order, so the eval losses compare the engines rather
than two draws of the shuffle (on 1,024 rows the order alone moves the eval loss by about ±0.01).
taskloom runs its real `train_adapter` (tokenizing inside its loop; each batch run as length-sorted
chunks padded to their own longest row); its time is the `train_seconds` of its metrics.json, and
steps.jsonl must hold one line per optimizer step.

Measured the same way on both sides:
- useful tokens: the sum of the attention mask over the examples trained (every training row once,
  truncated at max_length); the padding a side adds is work, not output (the table shows the token
  slots each side filled, padding included: the Trainer's counted in its collator, taskloom's from
  replaying its own batch plan).
- training time only: taskloom's own `train_seconds` (its loop: batching, tokenizing, forward,
  backward, optimizer); for the baseline, its loop timed from the Trainer's `on_train_begin` to
  `on_train_end` (collating, forward, backward, optimizer). Neither counts model loading, the probe
  fit, the optimizer's creation or evaluation; the whole `trainer.train()` call is printed beside.
- eval loss: cross-entropy of the head over the tuned encoder's embedding on the eval rows at the
  same max_length, computed here by one function for both (accuracy beside it).

Runs alternate (taskloom, baseline, baseline, taskloom, ...) in this one process with the same
thread count; the table keeps the best time of each side. Threads: default 1, the steadiest on a
shared machine (OMP_WAIT_POLICY=PASSIVE is set, as the CLI sets it: with OpenMP's default
busy-waiting, two threads on two busy cores made a step up to 10x slower). `--precision` is
taskloom's (default auto: bf16 autocast on CPUs with AMX or AVX512-BF16, as `taskloom train` runs);
`--baseline-bf16` gives the Trainer its own (`bf16=True`); `--no-dropout` turns dropout off on both
sides, so they differ only by arithmetic; `--device cuda` trains both on the GPU in bf16. Last line:
`ratio: X` = taskloom's useful tokens/s over the baseline's. Target: >= 1.5 with an equal or lower
eval loss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false",
               "OMP_WAIT_POLICY": "PASSIVE"}.items():  # as the CLI runs taskloom: idle OpenMP threads sleep
    os.environ.setdefault(_k, _v)
warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' notices inside PEFT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TASK = "rt-sentiment"


def token_counts(tok, texts: list[str], max_length: int) -> list[int]:
    """Each text's attention-mask sum, truncated at max_length (no padding): its useful tokens."""
    return [sum(m) for m in tok(texts, truncation=True, max_length=max_length)["attention_mask"]]


def taskloom_batches(n: int, batch: int, seed: int, steps: int) -> list[list[int]]:
    """taskloom's batches, in order: its own sampler replayed (a fresh shuffle each epoch)."""
    from taskloom.train.sampling import plan

    stream = plan([n], batch, seed)
    return [next(stream)[0][1] for _ in range(steps)]


def taskloom_padded_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    """Token slots taskloom's length-aware chunks fill, padding included."""
    from taskloom.models.chunks import padded_slots

    return sum(padded_slots([lengths[i] for i in idx]) for idx in batches)


def eval_scores(tok, encoder, head, rows: list[dict], labels: list[str], max_length: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `head` over the encoder's L2-normalised mean-pooled embedding."""
    import torch
    import torch.nn.functional as F

    from taskloom.models.encoder import encode

    encoder.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(rows), 64):
            chunk = rows[i : i + 64]
            emb = encode(encoder, tok, [r["text"] for r in chunk], max_length).float()
            logits = F.linear(emb, head.weight.float(), head.bias.float())
            gold = torch.tensor([labels.index(r["label"]) for r in chunk])
            loss += float(F.cross_entropy(logits, gold, reduction="sum"))
            correct += int((logits.argmax(1) == gold).sum())
    return loss / len(rows), correct / len(rows)


def train_spec(args):
    from taskloom.specs import TrainSpec

    return TrainSpec(epochs=1, rank=8, alpha=16.0, lr=args.lr, batch_size=args.batch, max_length=args.max_length,
                     seed=args.seed, device=args.device, precision=args.precision, checkpoint_every=0,
                     dropout=not args.no_dropout)


def run_taskloom(task, work: Path, args, run: int) -> dict:
    """taskloom's real trainer; its own timing from metrics.json, steps from steps.jsonl."""
    from taskloom.models.heads import load_head
    from taskloom.models.registry import resolve_base
    from taskloom.train.evaluate import load_adapter_model, load_split
    from taskloom.train.lora import train_adapter

    out = work / f"taskloom-{run}"
    spec = train_spec(args)
    train_adapter(task, out, spec, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    tok, model = load_adapter_model(str(resolve_base(task.base_model)), out / "adapter")
    head, labels = load_head(out / "adapter")
    loss, acc = eval_scores(tok, model, head, load_split(task, "eval"), labels, args.max_length)
    assert labels == task.labels
    lengths = token_counts(tok, [r["text"] for r in load_split(task, "train")], args.max_length)
    return {"seconds": float(metrics["train_seconds"]), "steps": len(steps), "metrics_steps": metrics["steps"],
            "slots": taskloom_padded_tokens(lengths, taskloom_batches(len(lengths), args.batch, args.seed, len(steps))),
            "tokens_reported": metrics.get("tokens"), "eval_loss": loss, "accuracy": acc,
            "reported_eval_loss": metrics.get("eval_loss"), "precision": metrics.get("precision", "?")}


def pooled_classifier(encoder, head):
    """The baseline's model (taskloom's objective): encoder, mean pool, L2 norm, linear head, cross-entropy."""
    import torch
    import torch.nn.functional as F

    from taskloom.models.encoder import mean_pool

    class PooledClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.head = encoder, head

        def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            emb = F.normalize(mean_pool(out.last_hidden_state, attention_mask), dim=-1)
            logits = self.head(emb.float())
            loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    return PooledClassifier()


def loop_clock():
    """A Trainer callback timing its training loop (on_train_begin → on_train_end), as taskloom's
    train_seconds times its loop: model set-up and the optimizer's creation are outside both."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        seconds = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds = time.perf_counter() - self.t0

    return Clock()


def run_baseline(task, work: Path, args, run: int) -> dict:
    """HF Trainer + PEFT on the same encoder, head start, data and schedule."""
    import math

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    from taskloom.models.encoder import load_encoder
    from taskloom.train.evaluate import fit_probe_head, load_split
    from taskloom.train.loop import MAX_GRAD_NORM, WARMUP_SHARE, WEIGHT_DECAY
    from taskloom.train.lora import LORA_DROPOUT, TARGET_MODULES

    hf_logging.set_verbosity_error()
    train_rows, eval_rows = load_split(task, "train"), load_split(task, "eval")
    torch.manual_seed(args.seed)
    tok, encoder = load_encoder(task.base_model)
    head = fit_probe_head(task, tok, encoder, train_rows, seed=args.seed)
    if args.no_dropout:  # as taskloom's --no-dropout: none in the base either
        for m in encoder.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    encoder = get_peft_model(encoder, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0 if args.no_dropout else LORA_DROPOUT,
                                                 target_modules=TARGET_MODULES, bias="none"))
    model = pooled_classifier(encoder, head)
    enc = tok([r["text"] for r in train_rows], truncation=True, max_length=args.max_length)
    data = [{**{k: enc[k][i] for k in enc}, "labels": task.labels.index(r["label"])} for i, r in enumerate(train_rows)]
    steps = math.ceil(len(data) / args.batch)
    targs = TrainingArguments(
        output_dir=str(work / f"hf-{run}"), per_device_train_batch_size=args.batch, num_train_epochs=1,
        learning_rate=args.lr, weight_decay=WEIGHT_DECAY, lr_scheduler_type="linear",
        warmup_steps=max(1, int(WARMUP_SHARE * steps)), max_grad_norm=MAX_GRAD_NORM,
        seed=args.seed if args.baseline_seed is None else args.baseline_seed,
        use_cpu=args.device == "cpu", save_strategy="no", eval_strategy="no", report_to=[], logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, bf16=args.baseline_bf16 or args.device == "cuda",
    )
    clock, pad, slots = loop_clock(), DataCollatorWithPadding(tok), [0]

    def collate(features):  # the strong setting: pad each batch to its longest row; count the slots filled
        batch = pad(features)
        slots[0] += batch["input_ids"].numel()
        return batch

    order = [i for idx in taskloom_batches(len(data), args.batch, args.seed, steps) for i in idx]

    class SameOrderTrainer(Trainer):  # the very batches taskloom trains on, in its order
        def _get_train_sampler(self, train_dataset=None):
            return order

    trainer = SameOrderTrainer(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would land in the table's output
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    model.to("cpu")  # both sides are scored on the CPU, by the same function
    loss, acc = eval_scores(tok, encoder, model.head, eval_rows, task.labels, args.max_length)
    return {"precision": "bf16" if args.baseline_bf16 or args.device == "cuda" else "fp32", "seconds": clock.seconds, "wall": wall,
            "slots": slots[0], "steps": int(result.global_step), "eval_loss": loss, "accuracy": acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=1024, help="training reviews (one epoch)")
    ap.add_argument("--eval-examples", type=int, default=500, help="held-out reviews for the eval loss")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each side (alternating); best time is kept")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both sides (1: steadiest when shared)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="one seed for both sides")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="taskloom's --precision")
    ap.add_argument("--baseline-bf16", action="store_true", help="bf16 autocast for the baseline too (bf16=True)")
    ap.add_argument("--baseline-seed", type=int, default=None,
                    help="the Trainer's own seed (its dropout masks), batches unchanged: how much dropout alone moves "
                         "the eval loss")
    ap.add_argument("--no-dropout", action="store_true",
                    help="no dropout on either side: the two runs then differ only by arithmetic, not random masks")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where both sides train (cuda: bf16 autocast on both); scoring runs on the CPU")
    args = ap.parse_args()

    import torch

    from taskloom.models.encoder import load_encoder
    from taskloom.specs import load_task
    from taskloom.tasks.catalog import export_task
    from taskloom.train.evaluate import load_split

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        folder = export_task(TASK, work / "task", max_train_rows=args.examples, max_eval_rows=args.eval_examples)
        task = load_task(folder)
        train_rows = load_split(task, "train")
        tok, _ = load_encoder(task.base_model)
        tokens = sum(token_counts(tok, [r["text"] for r in train_rows], args.max_length))
        print(f"{TASK}: {len(train_rows)} training reviews ({tokens} useful tokens at max_length {args.max_length}), "
              f"{len(load_split(task, 'eval'))} eval reviews; batch {args.batch}, 1 epoch, lr {args.lr:g}, "
              f"LoRA r 8 alpha 16", flush=True)
        gpu = f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
        print(f"machine: {os.cpu_count()} CPUs{gpu}, torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.2f} at start", flush=True)

        sides = {"taskloom": run_taskloom, "HF Trainer + PEFT": run_baseline}
        runs: dict[str, list[dict]] = {k: [] for k in sides}
        order = []
        for r in range(args.repeats):
            order += list(sides) if r % 2 == 0 else list(sides)[::-1]
        for i, name in enumerate(order):
            res = sides[name](task, work, args, i)
            runs[name].append(res)
            extra = f" (trainer.train() {res['wall']:.2f} s)" if "wall" in res else ""
            print(f"  run {i + 1}/{len(order)} {name:18s} {res['seconds']:7.2f} s  {tokens / res['seconds']:7.0f} "
                  f"useful tokens/s  eval loss {res['eval_loss']:.4f}{extra}", flush=True)

    tl = runs["taskloom"][-1]
    assert all(r["steps"] == r["metrics_steps"] for r in runs["taskloom"]), "steps.jsonl and metrics.json disagree"
    if tl["tokens_reported"] is not None:
        assert tl["tokens_reported"] == tokens, f"taskloom reports {tl['tokens_reported']} tokens, counted {tokens}"
    best = {name: min(r["seconds"] for r in rs) for name, rs in runs.items()}
    speed = {name: tokens / s for name, s in best.items()}
    print()
    print("| trainer | precision | steps | useful tokens | with padding | train s (best) | useful tokens/s | "
          "eval loss | eval accuracy | runs (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rs in runs.items():
        last = rs[-1]
        times = ", ".join(f"{r['seconds']:.1f}" for r in rs)
        print(f"| {name} | {last['precision']} | {last['steps']} | {tokens} | {last['slots']} | {best[name]:.2f} | "
              f"{speed[name]:.0f} | {last['eval_loss']:.4f} | "
              f"{last['accuracy']:.3f} | {times} |")
    if tl["reported_eval_loss"] is not None:
        print(f"\ntaskloom's own metrics.json: eval_loss {tl['reported_eval_loss']}, tokens {tl['tokens_reported']}")
    hf = runs["HF Trainer + PEFT"][-1]
    print(f"eval loss: taskloom − baseline = {tl['eval_loss'] - hf['eval_loss']:+.4f} (<= 0 is equal or better)")
    print(f"ratio: {speed['taskloom'] / speed['HF Trainer + PEFT']:.2f}")


if __name__ == "__main__":
    main()
