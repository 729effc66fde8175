"""Data-parallel training with torchrun: two CPU processes (gloo) follow the one-process loss curve.

Same task, options, seed and global batch (8 rows: 4 per process). With dropout off and float32
(bf16 autocast would round each shard's differently shaped chunks differently), the only difference
is the order of float sums (per-shard means, then the all-reduce), so the stated tolerance is 1e-4 on
every step's loss and on the final metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_train_lora import slice_task, steps

pytestmark = pytest.mark.e2e  # tier: torchrun with two processes

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ARGS = ["--max-steps", "12", "--batch-size", "8", "--max-length", "32", "--lr", "2e-3", "--checkpoint-every", "0",
        "--no-dropout", "--precision", "fp32"]


def test_two_processes_match_one_at_the_same_global_batch(tmp_path):
    task = slice_task(tmp_path / "task", "rt-sentiment", 96, 48)
    one = subprocess.Popen([sys.executable, "-m", "taskloom", "train", str(task), "--out", str(tmp_path / "one"), *ARGS],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "taskloom", "train", str(task), "--out", str(tmp_path / "two"), *ARGS],
                         env=ENV, capture_output=True, text=True, timeout=900)
    assert one.wait(timeout=900) == 0, one.stderr.read()
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads((tmp_path / "one" / "metrics.json").read_text()), json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert [s["loss"] for s in steps(tmp_path / "two")] == pytest.approx([s["loss"] for s in steps(tmp_path / "one")], abs=1e-4)
    assert [s["tokens"] for s in steps(tmp_path / "two")] == [s["tokens"] for s in steps(tmp_path / "one")]
    for key in ("tuned", "eval_loss", "final_loss"):
        assert b[key] == pytest.approx(a[key], abs=1e-4), key
    assert json.loads(two.stdout)["world_size"] == 2  # rank 0 alone prints the metrics
