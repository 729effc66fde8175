"""`train_adapter` on slices of the real built-in tasks: it learns (beats the honest base), its adapter
folder is real PEFT, its numbers are reproducible, and `evaluate_task` agrees with metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from taskloom.artifacts import verify_digest
from taskloom.data.rows import write_rows
from taskloom.specs import TrainSpec, load_task
from taskloom.tasks.catalog import build_task

# rt-sentiment: 256 training reviews, 48 steps of 16 (3 epochs), scored on 200 held-out reviews.
RT_TRAIN, RT_EVAL = 256, 200
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' notice inside PEFT loading

RT_SPEC = dict(max_steps=48, batch_size=16, max_length=64, lr=2e-3, seed=0)


def slice_task(folder: Path, name: str, n_train: int, n_eval: int) -> Path:
    """A built-in task cut to its first rows, written as a user would (task.yaml + JSONL)."""
    spec, train, eval_ = build_task(name)
    write_rows(folder / "train.jsonl", train[:n_train])
    write_rows(folder / "eval.jsonl", eval_[:n_eval])
    (folder / "task.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "task.yaml"


def steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def rt_run(tmp_path_factory):
    from taskloom.train.lora import train_adapter

    root = tmp_path_factory.mktemp("rt")
    task = load_task(slice_task(root / "task", "rt-sentiment", RT_TRAIN, RT_EVAL))
    metrics = train_adapter(task, root / "run", TrainSpec(**RT_SPEC), progress=False)
    return task, root / "run", metrics


def test_training_beats_the_linear_probe_on_held_out_reviews(rt_run):
    _task, _run, m = rt_run
    assert m["metric"] == "accuracy" and m["type"] == "classification"
    assert 0.6 < m["base"] < 0.85  # a probe on frozen MiniLM: far above chance, not perfect
    assert m["tuned"] >= m["base"] + 0.03
    assert m["gain"] == pytest.approx(m["tuned"] - m["base"], abs=1e-6)


def test_metrics_json_records_the_run(rt_run):
    _task, run, m = rt_run
    written = json.loads((run / "metrics.json").read_text())
    assert written == m
    assert verify_digest(run / "metrics.json")
    assert {"task", "type", "metric", "base", "tuned", "train_seconds", "train_rows", "steps"} <= set(written)
    assert written["task"] == "rt-sentiment" and written["train_rows"] == RT_TRAIN and written["eval_rows"] == RT_EVAL
    assert written["steps"] == 48 and written["epochs"] == 3.0 and written["train_seconds"] > 0


def test_steps_log_has_one_line_per_step_and_the_loss_falls(rt_run):
    _task, run, _m = rt_run
    log = steps(run)
    assert [s["step"] for s in log] == list(range(1, 49))
    assert {"step", "epoch", "loss", "lr", "examples_per_s"} <= set(log[0])
    assert [s["epoch"] for s in log] == [i // 16 for i in range(48)]
    assert max(s["lr"] for s in log) == pytest.approx(2e-3) and log[-1]["lr"] < 1e-4  # warm-up, then decay
    first, last = sum(s["loss"] for s in log[:8]) / 8, sum(s["loss"] for s in log[-8:]) / 8
    assert last < first - 0.05
    assert not list(run.glob(".*"))  # no staging leftovers
    assert {"tokens", "tokens_per_s"} <= set(log[0]) and all(s["tokens"] > 0 for s in log)


def test_report_html_plots_the_loss_curve(rt_run):
    _task, run, m = rt_run
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "rt-sentiment" in html
    assert f"{m['tuned']:.4f}" in html


def test_adapter_folder_is_peft_with_head_card_and_digests(rt_run):
    task, run, m = rt_run
    adapter = run / "adapter"
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "task.json", "head.safetensors", "head.json"} <= names
    for weights in ("adapter_model.safetensors", "head.safetensors"):
        assert verify_digest(adapter / weights)
    assert json.loads((adapter / "head.json").read_text())["labels"] == ["fresh", "rotten"]
    assert json.loads((adapter / "task.json").read_text())["task"] == "rt-sentiment"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["peft_type"] == "LORA" and config["base_model_name_or_path"] == "minilm"
    card = (adapter / "README.md").read_text()
    assert "rt-sentiment" in card and f"{m['tuned']:.4f}" in card and f"{m['base']:.4f}" in card


def test_peft_loads_the_adapter_and_it_changes_the_embedding(rt_run):
    import torch
    from peft import PeftModel

    from taskloom.models.encoder import embed_texts, load_encoder

    _task, run, _m = rt_run
    tok, base = load_encoder("minilm")
    texts = ["A dull, lifeless film.", "Warm, funny and wise."]
    before = embed_texts(texts, model=base, tok=tok)
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert len(lora) == 6 * 6  # query, key, value, attention output and both feed-forward layers, 6 blocks
    after = embed_texts(texts, model=model, tok=tok)
    assert torch.tensor(before - after).abs().max().item() > 1e-3


def test_evaluate_with_the_adapter_reproduces_metrics_tuned(rt_run):
    from taskloom.train.evaluate import evaluate_task

    task, run, m = rt_run
    result = evaluate_task(task, adapter=run / "adapter")
    assert result["metric"] == "accuracy" and result["n"] == RT_EVAL
    assert result["value"] == pytest.approx(m["tuned"], abs=1e-9)
    base = evaluate_task(task)
    assert base["value"] == pytest.approx(m["base"], abs=1e-9)


def test_a_merged_model_folder_scores_like_the_adapter(rt_run, tmp_path):
    """`--model DIR`: a full HF folder (here the adapter merged by PEFT) with heads/<task>/ beside it."""
    import shutil

    from peft import PeftModel

    from taskloom.models.encoder import load_encoder
    from taskloom.train.evaluate import evaluate_task

    task, run, m = rt_run
    tok, base = load_encoder("minilm")
    merged = PeftModel.from_pretrained(base, str(run / "adapter")).merge_and_unload()
    merged.save_pretrained(tmp_path / "full")
    tok.save_pretrained(tmp_path / "full")
    (tmp_path / "full" / "heads" / task.name).mkdir(parents=True)
    for f in ("head.safetensors", "head.json"):
        shutil.copy(run / "adapter" / f, tmp_path / "full" / "heads" / task.name / f)
    assert evaluate_task(task, model=tmp_path / "full")["value"] == pytest.approx(m["tuned"], abs=0.006)


def test_same_seed_same_loss_curve_other_seed_other_curve(tmp_path):
    from taskloom.train.lora import train_adapter

    task = load_task(slice_task(tmp_path / "task", "rt-sentiment", 40, 20))
    spec = dict(max_steps=4, batch_size=8, max_length=32)
    curves = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_adapter(task, tmp_path / run, TrainSpec(seed=seed, **spec), progress=False)
        curves.append([s["loss"] for s in steps(tmp_path / run)])
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]
    w = [(tmp_path / r / "adapter" / "adapter_model.safetensors").read_bytes() for r in ("a", "b")]
    assert w[0] == w[1]


def test_pair_similarity_training_does_not_lose_to_the_cosine_of_the_base(tmp_path):
    from taskloom.train.lora import train_adapter

    task = load_task(slice_task(tmp_path / "task", "lee-similarity", 240, 105))
    m = train_adapter(task, tmp_path / "run", TrainSpec(max_steps=15, batch_size=16, max_length=64, seed=0), progress=False)
    assert m["metric"] == "pearson" and 0.4 < m["base"] < 0.9
    assert m["tuned"] >= m["base"]
    assert "base_spearman" in m and "tuned_spearman" in m
    assert not (tmp_path / "run" / "adapter" / "head.safetensors").exists()


def test_retrieval_training_improves_mrr_over_the_base(tmp_path):
    from taskloom.train.lora import train_adapter

    task = load_task(slice_task(tmp_path / "task", "chatterbot-qa", 240, 120))
    m = train_adapter(task, tmp_path / "run", TrainSpec(max_steps=15, batch_size=16, max_length=32, lr=2e-3, seed=0),
                      progress=False)
    assert m["metric"] == "mrr" and 0.2 < m["base"] < 0.95
    assert m["tuned"] >= m["base"] + 0.005
    assert m["eval_loss"] < m["base_eval_loss"]  # the InfoNCE objective itself fell on held-out rows
