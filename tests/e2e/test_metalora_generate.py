"""Meta-LoRA end to end: a tiny bank trained by taskloom's own train path, a generator trained on it,
`taskloom generate` for a task outside the bank; the adapter is served, scored and laid out like a
trained one."""

import json
from pathlib import Path

import pytest
from metalora_bank import chat_task, tiny_bank

from taskloom import steps
from taskloom.cli import main
from taskloom.metalora.generator import train_generator
from taskloom.serve.adapters import check_adapter
from taskloom.specs import load_task

pytestmark = pytest.mark.e2e

TARGET = ("money", "sports")


@pytest.fixture(scope="module")
def bank(tmp_path_factory) -> Path:
    return tiny_bank(tmp_path_factory.mktemp("bank"))


def test_generate_writes_an_adapter_that_serves_and_scores(bank, tmp_path, capsys):
    gen = tmp_path / "generator"
    config = train_generator(bank, gen, seed=0, candidates=((8, 32, "gelu", 1e-2),), steps=60, progress=False, sft=((0, 0.0), (3, 1e-3)))
    assert config["seen_tasks"] == ["topic-ai-emotion", "topic-coding-trivia"]
    task_yaml = chat_task(tmp_path / "task", *TARGET)

    for shots in (0, 4):
        out = tmp_path / f"gen-{shots}"
        rc = main(["generate", str(task_yaml), "--generator", str(gen), "--out", str(out), "--shots", str(shots)])
        printed = json.loads(capsys.readouterr().out)
        assert rc == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics == printed
        assert metrics["task"] == "topic-money-sports" and metrics["type"] == "classification"
        assert metrics["metric"] == "accuracy" and metrics["shots"] == shots
        assert 0.0 <= metrics["base"] <= 1.0 and 0.0 <= metrics["tuned"] <= 1.0
        assert metrics["generation_ms"] > 0
        assert metrics["head"] == ("probe on the examples" if shots else "label prototypes")

        # deployable: the same files as a trained adapter, digests that check out
        trained = {p.name for p in (bank / "adapters" / "topic-ai-emotion" / "adapter").iterdir()}
        assert {p.name for p in (out / "adapter").iterdir()} == trained
        info = check_adapter(out / "adapter")
        assert info["labels"] == ["money", "sports"] and info["rank"] == config["rank"] == 8 and info["task"] == "topic-money-sports"

        # `taskloom eval` scores it as generate did
        scored = steps.evaluate(load_task(task_yaml), adapter=out / "adapter")
        assert scored["value"] == pytest.approx(metrics["tuned"], abs=1e-6)
