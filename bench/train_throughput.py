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

The baseline (`--baseline best`, the default) is the Trainer in its best CPU configuration: the
training set tokenized once (truncation at max_length, no padding), `DataCollatorWithPadding` padding
each batch to its longest row, `bf16=True` (autocast on this CPU's AMX), `train_sampling_strategy="group_by_length"` (its
LengthGroupedSampler: batches of similar length, so little padding), SDPA attention (transformers'
default for BERT, printed), `use_cpu=True`, `save_strategy="no"`, `report_to=[]`. Its batches then
differ from taskloom's, so the eval losses also differ by the draw of the order (on 1,024 rows the
order alone moves the eval loss by about ±0.01): run several `--seed`s. `--baseline same-order` is
the earlier anchor: fp32 (unless `--baseline-bf16`), and the Trainer handed taskloom's very batches
in the same order (taskloom's sampler is a plain seeded shuffle per epoch), so the eval losses compare
the engines alone. `torch_compile=True` is not given to the Trainer: compiling took longer than the
whole epoch here (see BENCHMARKS.md).
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
`ratio: X` = taskloom's useful tokens/s over the baseline's (both see the same tokens, so it is also
the ratio of training times). The line before it says whether taskloom reached the Trainer's final
eval loss within its epoch: only then is that ratio a time-to-the-Trainer's-loss ratio (a lower
bound on it, since taskloom may reach it before its last step).
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
sys.path.insert(0, str(ROOT / "bench"))
from peak import matmul_gflops  # noqa: E402

TASK = "rt-sentiment"
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def useful_flops_per_token(encoder) -> int:
    """4 × the Linear weights: 2N forward and 2N for the activations' gradients; the frozen base gets no
    weight gradient, and LoRA's own matmuls (r 8) and attention scores (~30 tokens) are a few percent."""
    import torch

    return 4 * sum(m.weight.numel() for name, m in encoder.named_modules()
                   if isinstance(m, torch.nn.Linear) and "pooler" not in name)  # mean pooling: no pooler


def profile_taskloom(task, work: Path, args) -> None:
    """One more taskloom run under torch.profiler: self CPU time of the matmul kernels against the rest."""
    from torch.profiler import ProfilerActivity, profile

    from taskloom.train.lora import train_adapter

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_adapter(task, work / "taskloom-profiled", train_spec(args), progress=False)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows) / 1e6
    matmul = sum(e.self_cpu_time_total for e in rows if e.key in MATMUL_OPS) / 1e6
    print(f"\nprofile of one taskloom `train_adapter` (probe fit, loop, final eval; self CPU time): {total:.2f} s in ops, matmul kernels "
          f"{matmul:.2f} s ({100 * matmul / total:.0f} %), the rest {total - matmul:.2f} s")
    print("| op | self CPU s | share | calls |")
    print("|---|---|---|---|")
    for e in rows[:12]:
        t = e.self_cpu_time_total / 1e6
        print(f"| {e.key} | {t:.3f} | {100 * t / total:.1f} % | {e.count} |")


def token_counts(tok, texts: list[str], max_length: int) -> list[int]:
    """Each text's attention-mask sum, truncated at max_length (no padding): its useful tokens."""
    return [sum(m) for m in tok(texts, truncation=True, max_length=max_length)["attention_mask"]]


def taskloom_batches(lengths: list[int], batch: int, seed: int, steps: int, sampling: str = "random") -> list[list[int]]:
    """taskloom's batches, in order: its own sampler replayed (a fresh shuffle each epoch)."""
    from taskloom.train.sampling import plan

    stream = plan([len(lengths)], batch, seed, lengths=[lengths] if sampling == "grouped" else None)
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
                     dropout=not args.no_dropout, sampling=args.sampling)


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
            "slots": taskloom_padded_tokens(lengths, taskloom_batches(lengths, args.batch, args.seed, len(steps), args.sampling)),
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
    best = args.baseline == "best"
    bf16 = best or args.baseline_bf16 or args.device == "cuda"
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
        disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, bf16=bf16,
        train_sampling_strategy="group_by_length" if best else "random",
    )
    clock, pad, slots = loop_clock(), DataCollatorWithPadding(tok), [0]

    def collate(features):  # the strong setting: pad each batch to its longest row; count the slots filled
        batch = pad(features)
        slots[0] += batch["input_ids"].numel()
        return batch

    lengths = [len(d["input_ids"]) for d in data]
    order = [i for idx in taskloom_batches(lengths, args.batch, args.seed, steps, args.sampling) for i in idx]

    class SameOrderTrainer(Trainer):  # the very batches taskloom trains on, in its order
        def _get_train_sampler(self, train_dataset=None):
            return order

    trainer = (Trainer if best else SameOrderTrainer)(model=model, args=targs, train_dataset=data, data_collator=collate, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its end-of-training dict would land in the table's output
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    model.to("cpu")  # both sides are scored on the CPU, by the same function
    loss, acc = eval_scores(tok, encoder, model.head, eval_rows, task.labels, args.max_length)
    return {"precision": "bf16" if bf16 else "fp32", "attention": encoder.config._attn_implementation,
            "sampler": "group_by_length" if best else "taskloom's order", "seconds": clock.seconds, "wall": wall,
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
    ap.add_argument("--sampling", default="random", choices=["random", "grouped"], help="taskloom's --sampling")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="taskloom's --precision")
    ap.add_argument("--baseline", default="best", choices=["best", "same-order"],
                    help="best: the Trainer with bf16=True and group_by_length; same-order: fp32, handed taskloom's batches")
    ap.add_argument("--baseline-bf16", action="store_true", help="with --baseline same-order: bf16=True for the Trainer")
    ap.add_argument("--baseline-seed", type=int, default=None,
                    help="the Trainer's own seed (its dropout masks), batches unchanged: how much dropout alone moves "
                         "the eval loss")
    ap.add_argument("--no-dropout", action="store_true",
                    help="no dropout on either side: the two runs then differ only by arithmetic, not random masks")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where both sides train (cuda: bf16 autocast on both); scoring runs on the CPU")
    ap.add_argument("--profile", action="store_true", help="one more taskloom run under torch.profiler: where the time goes")
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
        tok, encoder = load_encoder(task.base_model)
        flops_per_token = useful_flops_per_token(encoder)
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
        shape = (args.batch * args.max_length, 384, 1536)  # a batch's tokens through the FFN's first Linear
        peaks = {"fp32": [], "bf16": []}
        for i, name in enumerate(order):
            if args.device == "cpu":
                peaks["fp32"].append(matmul_gflops(torch.float32, *shape))
                peaks["bf16"].append(matmul_gflops(torch.bfloat16, *shape))
            res = sides[name](task, work, args, i)
            runs[name].append(res)
            extra = f" (trainer.train() {res['wall']:.2f} s)" if "wall" in res else ""
            print(f"  run {i + 1}/{len(order)} {name:18s} {res['seconds']:7.2f} s  {tokens / res['seconds']:7.0f} "
                  f"useful tokens/s  eval loss {res['eval_loss']:.4f}{extra}", flush=True)
        if args.profile:
            profile_taskloom(task, work, args)

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
    if peaks["fp32"]:
        p32, p16 = max(peaks["fp32"]), max(peaks["bf16"])
        print(f"\nmatmul rate measured before each run ({shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]}, "
              f"{torch.get_num_threads()} threads, best): fp32 {p32:.1f}, bf16 {p16:.1f} GFLOP/s")
        for name, v in speed.items():
            g = v * flops_per_token / 1e9
            print(f"useful GFLOP/s ({flops_per_token / 1e6:.1f} MFLOP per useful token): {name} {g:.1f} = "
                  f"{100 * g / p16:.1f} % of bf16, {100 * g / p32:.1f} % of fp32")
    if tl["reported_eval_loss"] is not None:
        print(f"\ntaskloom's own metrics.json: eval_loss {tl['reported_eval_loss']}, tokens {tl['tokens_reported']}")
    hf = runs["HF Trainer + PEFT"][-1]
    print(f"baseline: {hf['precision']}, {hf['sampler']}, attention {hf['attention']}")
    print(f"eval loss: taskloom − baseline = {tl['eval_loss'] - hf['eval_loss']:+.4f} (<= 0 is equal or better)")
    reached = tl["eval_loss"] <= hf["eval_loss"]
    print("time to the Trainer's final eval loss: " + (
        f"reached; at most {best['taskloom']:.2f} s against the Trainer's {best['HF Trainer + PEFT']:.2f} s"
        if reached else "not reached within taskloom's epoch (the ratio below is throughput only)"))
    print(f"ratio: {speed['taskloom'] / speed['HF Trainer + PEFT']:.2f}")


if __name__ == "__main__":
    main()
