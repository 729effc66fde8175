"""`taskloom train` / `taskloom eval` on bad input: exit 2, one `error:` line, nothing written to --out."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from taskloom.cli import main
from taskloom.data.rows import write_rows


@pytest.fixture(scope="module")
def task(rt_small) -> Path:
    return rt_small  # the shared 24/12-row rt-sentiment task (tests/conftest.py)


def variant(task: Path, tmp: Path, **changes) -> Path:
    """A copy of the task folder with task.yaml fields changed."""
    import shutil

    folder = tmp / "variant"
    shutil.copytree(task.parent, folder)
    doc = yaml.safe_load(task.read_text())
    doc.update(changes)
    (folder / "task.yaml").write_text(yaml.safe_dump(doc))
    return folder / "task.yaml"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-steps", "0"], "--max-steps"),
        (["--epochs", "0"], "--epochs"),
        (["--rank", "0"], "--rank"),
        (["--rank", "1000"], "--rank 1000: larger than the adapted layers' dimension (384)"),
        (["--lr", "-1"], "--lr"),
        (["--device", "tpu"], "--device"),
        (["--mixing", "shuffled"], "--mixing"),
        (["--precision", "fp8"], "--precision"),
        (["--temperature", "0"], "--temperature"),
        (["--checkpoint-every", "-1"], "--checkpoint-every"),
        (["--key-weight", "0"], "--key-weight"),
        (["--base", "no-such-model"], "unknown base model 'no-such-model'"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(task, tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", str(task), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_cuda_without_a_gpu_is_refused(task, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert main(["train", str(task), "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_empty_train_split_exit_2(task, tmp_path, capsys):
    bad = variant(task, tmp_path)
    (bad.parent / "train.jsonl").write_text("")
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "train.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_generation_task_on_an_encoder_base_exit_2(tmp_path, capsys):
    folder = tmp_path / "gen"
    write_rows(folder / "train.jsonl", [{"prompt": "Say hi", "response": "hi"}])
    write_rows(folder / "eval.jsonl", [{"prompt": "Say bye", "response": "bye"}])
    (folder / "task.yaml").write_text(yaml.safe_dump({"name": "g", "type": "generation", "description": "d",
                                                      "data": {"train": "train.jsonl", "eval": "eval.jsonl"}}))
    out = tmp_path / "run"
    assert main(["train", str(folder / "task.yaml"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: task g: a generation task needs a causal LM base (e.g. smollm2), not 'minilm'"
    assert not out.exists()


def test_classification_task_on_a_causal_base_exit_2(task, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(task), "--base", "smollm2", "--out", str(out)]) == 2
    assert "needs an encoder base" in capsys.readouterr().err
    assert not out.exists()


def test_out_that_is_a_file_is_refused_and_kept(task, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("keep me")
    assert main(["train", str(task), "--out", str(out)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_eval_refuses_adapter_and_model_together(task, tmp_path, capsys):
    assert main(["eval", str(task), "--adapter", str(tmp_path), "--model", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
