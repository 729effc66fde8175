"""bench/train_throughput.py on 64 reviews: both trainers run the same steps over the same useful tokens,
both learn from the same head start, and the output ends with a parseable `ratio:` line."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # tier: runs the training benchmark script (both engines) as a subprocess

ROOT = Path(__file__).resolve().parents[2]


def test_bench_trains_both_sides_on_the_same_tokens():
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--examples", "64", "--eval-examples", "48",
         "--repeats", "1"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| taskloom |") or line.startswith("| HF Trainer + PEFT |"):
            rows[cells[0]] = {"steps": int(cells[2]), "tokens": int(cells[3]), "slots": int(cells[4]),
                              "tps": float(cells[6]), "eval_loss": float(cells[7])}
    tl, hf = rows["taskloom"], rows["HF Trainer + PEFT"]
    assert tl["steps"] == hf["steps"] == 2  # 64 rows, batch 32, one epoch
    assert tl["tokens"] == hf["tokens"] > 64 * 5  # each review is several tokens, the same count on both sides
    assert tl["slots"] >= tl["tokens"] and hf["slots"] >= hf["tokens"]  # padding only ever adds slots
    # both start from the same fitted probe head and take two small steps: neither may blow up
    assert 0.2 < tl["eval_loss"] < 0.8 and 0.2 < hf["eval_loss"] < 0.8
    assert abs(tl["eval_loss"] - hf["eval_loss"]) < 0.05
    m = re.fullmatch(r"ratio: (\d+\.\d+)", lines[-1])
    assert m, lines[-1]
    ratio = float(m.group(1))
    assert math.isclose(ratio, tl["tps"] / hf["tps"], rel_tol=0.02, abs_tol=0.01)
