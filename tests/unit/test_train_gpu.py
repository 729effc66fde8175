"""The training loop on CUDA (marked gpu: `make test-all` runs it; skipped without a GPU): the same code
path as on the CPU, in bf16 autocast, learning the same thing.

A short rt-sentiment run trains on the GPU and on the CPU (float32) from the same seed with dropout
off, so the two differ only by bf16 rounding and kernels: their loss curves must agree closely and the
CUDA adapter, loaded on the CPU, must score what the run reported."""

from __future__ import annotations

import json

import pytest
from test_train_lora import slice_task

from taskloom.specs import TrainSpec, load_task

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "steps.jsonl").read_text().splitlines()]


def test_cuda_run_matches_the_cpu_run_and_its_adapter_scores_on_the_cpu(tmp_path):
    from taskloom.train.evaluate import evaluate_task
    from taskloom.train.lora import train_adapter

    task = load_task(slice_task(tmp_path / "rt", "rt-sentiment", 256, 96))
    common = dict(max_steps=10, batch_size=16, max_length=48, lr=2e-3, seed=0, dropout=False, checkpoint_every=4)
    gpu = train_adapter(task, tmp_path / "gpu", TrainSpec(device="cuda", **common), progress=False)
    cpu = train_adapter(task, tmp_path / "cpu", TrainSpec(device="cpu", precision="fp32", **common), progress=False)
    assert gpu["device"].startswith("cuda") and gpu["precision"] == "bf16" and cpu["precision"] == "fp32"
    assert gpu["steps"] == cpu["steps"] == 10 and gpu["tokens"] == cpu["tokens"]
    assert losses(tmp_path / "gpu") == pytest.approx(losses(tmp_path / "cpu"), abs=0.03)
    assert gpu["tuned"] == pytest.approx(cpu["tuned"], abs=0.05)  # 96 eval rows: a few rows may flip
    again = evaluate_task(task, adapter=tmp_path / "gpu" / "adapter", device="cpu")
    assert again["value"] == pytest.approx(gpu["tuned"], abs=0.03)  # scored in bf16 on CUDA, fp32 here
