"""The training engine beyond one task in one process: multi-task adapters, checkpoints that survive
`kill -9` and resume to the same result, a disk that fills up mid-checkpoint, and the task sampler.

Runs are short (a few dozen steps on slices of the real built-in tasks) but real: MiniLM, PEFT,
the `taskloom train` command in a subprocess where a process must die."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from test_train_lora import slice_task, steps

from taskloom.specs import TrainSpec, load_task
from taskloom.train.sampling import plan, task_probabilities

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::FutureWarning")]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# one short rt-sentiment run, with a checkpoint every 4 steps
RUN = ["--max-steps", "12", "--batch-size", "8", "--max-length", "32", "--lr", "2e-3", "--checkpoint-every", "4"]


def taskloom(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "taskloom", *map(str, args)], env=ENV, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def rt(tmp_path_factory) -> Path:
    return slice_task(tmp_path_factory.mktemp("rt") / "task", "rt-sentiment", 96, 48)


@pytest.fixture(scope="module")
def straight(rt, tmp_path_factory) -> Path:
    """The uninterrupted run every resumed run must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    done = taskloom("train", rt, "--out", out, *RUN)
    assert done.returncode == 0, done.stderr
    return out


# ---- the sampler ---------------------------------------------------------------------------------
def test_temperature_flattens_the_task_mix():
    assert task_probabilities([900, 100], 1.0) == pytest.approx([0.9, 0.1])
    assert task_probabilities([900, 100], 2.0) == pytest.approx([0.75, 0.25])
    assert task_probabilities([900, 100], 1e9) == pytest.approx([0.5, 0.5], abs=1e-6)


def test_single_task_batches_follow_the_probabilities_and_cover_each_epoch():
    stream = plan([300, 100], batch_size=10, seed=3, temperature=2.0, mixing="task")
    picks = [next(stream) for _ in range(2000)]
    assert all(len(step) == 1 and step[0][2] == 1.0 for step in picks)
    share = Counter(step[0][0] for step in picks)[0] / len(picks)
    assert share == pytest.approx(task_probabilities([300, 100], 2.0)[0], abs=0.03)
    rows_of_1 = [i for step in picks if step[0][0] == 1 for i in step[0][1]][:100]
    assert sorted(rows_of_1) == list(range(100))  # a task's first epoch sees each of its rows once


def test_mixed_batches_hold_every_task_with_shares_summing_to_one():
    stream = plan([300, 100], batch_size=16, seed=0, temperature=1.0, mixing="mixed")
    step = next(stream)
    assert [i for i, _, _ in step] == [0, 1]
    assert [len(idx) for _, idx, _ in step] == [12, 4]
    assert sum(s for _, _, s in step) == pytest.approx(1.0)


def test_the_plan_is_a_pure_function_of_the_seed():
    a, b = plan([60], 8, seed=5), plan([60], 8, seed=5)
    assert [next(a) for _ in range(20)] == [next(b) for _ in range(20)]
    assert [next(plan([60], 8, seed=6)) for _ in range(8)] != [next(plan([60], 8, seed=5)) for _ in range(8)]


def test_each_epoch_is_a_fresh_shuffle_of_every_row():
    stream = plan([60], 8, seed=5)
    epochs = [[i for _ in range(8) for i in next(stream)[0][1]] for _ in range(2)]  # 8 batches = 60 rows
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(60))
    assert epochs[0] != epochs[1] and epochs[0] != list(range(60))


def test_grouped_batches_cover_each_epoch_with_similar_lengths():
    lengths = [random.Random(i).randint(5, 64) for i in range(640)]
    spread = {}
    for mode, rows in (("random", None), ("grouped", [lengths])):
        stream = plan([640], 32, seed=1, lengths=rows)
        batches = [next(stream)[0][1] for _ in range(40)]  # two epochs of 20 batches
        for epoch in (batches[:20], batches[20:]):
            assert sorted(i for idx in epoch for i in idx) == list(range(640))
        spread[mode] = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread["grouped"] < spread["random"] / 4, spread
    again = plan([640], 32, seed=1, lengths=[lengths])
    first = plan([640], 32, seed=1, lengths=[lengths])
    assert [next(again) for _ in range(25)] == [next(first) for _ in range(25)]  # still a pure function
    # the batches of a grouped epoch come in shuffled order, not longest to shortest
    maxima = [max(lengths[i] for i in next(first)[0][1]) for _ in range(15)]
    assert maxima != sorted(maxima, reverse=True)


# ---- one adapter, several tasks -------------------------------------------------------------------
def test_one_adapter_learns_two_tasks_and_each_scores_like_metrics_json(rt, tmp_path):
    from taskloom.train.evaluate import evaluate_task
    from taskloom.train.lora import train_tasks

    lee = slice_task(tmp_path / "lee", "lee-similarity", 160, 60)
    tasks = [load_task(rt), load_task(lee)]
    spec = TrainSpec(max_steps=30, batch_size=16, max_length=48, lr=2e-3, seed=0, checkpoint_every=0)
    m = train_tasks(tasks, tmp_path / "joint", spec, progress=False)
    assert m["type"] == "multitask" and set(m["tasks"]) == {"rt-sentiment", "lee-similarity"}
    assert m["tasks"]["rt-sentiment"]["tuned"] > m["tasks"]["rt-sentiment"]["base"]
    assert m["tasks"]["lee-similarity"]["tuned"] > m["tasks"]["lee-similarity"]["base"] - 0.01
    log = steps(tmp_path / "joint")
    seen = Counter(s["tasks"][0] for s in log)
    assert seen["rt-sentiment"] > 0 and seen["lee-similarity"] > 0  # both tasks trained, one per step
    adapter = tmp_path / "joint" / "adapter"
    assert (adapter / "heads" / "rt-sentiment" / "head.safetensors").exists()
    assert json.loads((adapter / "task.json").read_text())["type"] == "multitask"
    for t in tasks:
        again = evaluate_task(t, adapter=adapter, device="cpu")
        assert again["value"] == pytest.approx(m["tasks"][t.name]["tuned"], abs=1e-4)


def test_tasks_of_different_kinds_or_twice_are_refused(rt, tmp_path, capsys):
    from taskloom.cli import main

    assert main(["train", str(rt), str(rt), "--out", str(tmp_path / "o")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- checkpoints, kill -9, resume ----------------------------------------------------------------
def test_a_run_killed_mid_way_resumes_to_the_same_result(rt, straight, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "taskloom", "train", str(rt), "--out", str(out), *RUN], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / ".steps.partial.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 6:  # past the checkpoint at step 4
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000004"]

    again = taskloom("train", rt, "--out", out, *RUN)
    assert again.returncode == 2 and "--resume" in again.stderr  # no silent restart over a resumable run
    other = taskloom("train", rt, "--out", out, *RUN, "--lr", "1e-3", "--resume")
    assert other.returncode == 2 and "different run" in other.stderr  # nor a resume that trains something else
    done = taskloom("train", rt, "--out", out, *RUN, "--resume")
    assert done.returncode == 0, done.stderr
    resumed, whole = json.loads((out / "metrics.json").read_text()), json.loads((straight / "metrics.json").read_text())
    assert resumed["resumed_from_step"] == 4
    # stated tolerance: the same numbers to 1e-5 (same threads, same order of operations)
    for key in ("tuned", "eval_loss", "final_loss"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-5), key
    assert [s["loss"] for s in steps(out)] == pytest.approx([s["loss"] for s in steps(straight)], abs=1e-5)
    assert not (out / "checkpoints").exists() and not (out / ".steps.partial.jsonl").exists()


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs a private tmpfs mount (unshare -rm)")
def test_a_full_disk_mid_checkpoint_keeps_the_previous_one(rt, straight, tmp_path):
    """A real small filesystem: the first checkpoint fits, the second does not."""
    # a checkpoint holds the LoRA tensors and head (~ the adapter's weights) plus AdamW's two moments: ~3x
    size = (straight / "adapter" / "adapter_model.safetensors").stat().st_size
    disk = tmp_path / "disk"
    disk.mkdir()
    keep = tmp_path / "kept"
    # inside a private mount namespace: a tmpfs of ~1.5 checkpoints as --out, train, then copy what is left out
    script = (f"mount -t tmpfs -o size={int(size * 4.5) // 1024}k tmpfs {disk} && "
              f"{sys.executable} -m taskloom train {rt} --out {disk}/run {' '.join(RUN)} 2> {tmp_path}/err; "
              f"echo rc=$? > {tmp_path}/rc; "
              f"cp -a {disk}/run {keep}")
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=ENV, capture_output=True, text=True)
    assert (tmp_path / "rc").read_text().strip() == "rc=2"
    err = (tmp_path / "err").read_text().strip().splitlines()
    assert err[-1].startswith("error: disk full while writing checkpoint step 8") and "step-000004" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in (keep / "checkpoints").iterdir()) == ["step-000004"]
    assert not list((keep / "checkpoints").glob(".*"))  # the failed checkpoint left no partial folder
    assert not (keep / "adapter").exists() and not (keep / "metrics.json").exists()
    done = taskloom("train", rt, "--out", keep, *RUN, "--resume")  # on a disk with room: carries on
    assert done.returncode == 0, done.stderr
    resumed, whole = json.loads((keep / "metrics.json").read_text()), json.loads((straight / "metrics.json").read_text())
    assert resumed["tuned"] == pytest.approx(whole["tuned"], abs=1e-5)


# ---- generation on SmolLM2 through the same loop -------------------------------------------------
def test_generation_adapter_lowers_the_held_out_answer_loss(tmp_path):
    from taskloom.train.evaluate import evaluate_task
    from taskloom.train.lora import train_adapter

    task = load_task(slice_task(tmp_path / "gen", "chatterbot-gen", 48, 16))
    spec = TrainSpec(max_steps=8, batch_size=8, max_length=64, precision="bf16", seed=0, checkpoint_every=0)
    m = train_adapter(task, tmp_path / "run", spec, progress=False)
    assert m["type"] == "generation" and m["metric"] == "answer_loss" and m["base_model"] == "smollm2"
    assert m["higher_is_better"] is False
    assert m["tuned"] < m["base"] and m["gain"] == pytest.approx(m["base"] - m["tuned"], abs=1e-6) and m["drop"] > 0
    assert m["tokens"] > 0
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2"
    again = evaluate_task(task, adapter=adapter, device="cpu")
    assert again["value"] == pytest.approx(m["tuned"], abs=1e-4)
