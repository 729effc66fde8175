"""Shared test setup: strictly offline, quiet, deterministic thread counts; the tiers; shared fixtures."""

from pathlib import Path

import pytest
import yaml

from taskloom.data.rows import write_rows
from taskloom.environment import apply_local_env
from taskloom.tasks.catalog import build_task

apply_local_env()  # before any test imports torch or a Hugging Face library

TIERS = ("e2e", "slow", "gpu", "cluster")


def pytest_collection_modifyitems(items):
    """A test without a tier is `fast`, so `pytest -m fast` is the quick inner loop."""
    for item in items:
        if not any(item.get_closest_marker(t) for t in TIERS):
            item.add_marker(pytest.mark.fast)


def small_task(folder: Path, name: str = "rt-sentiment", train_rows: int = 24, eval_rows: int = 12) -> Path:
    """A built-in task cut to a few rows, written as task.yaml + JSONL: the inputs of a quick CLI run."""
    spec, train, eval_ = build_task(name)
    write_rows(folder / "train.jsonl", train[:train_rows])
    write_rows(folder / "eval.jsonl", eval_[:eval_rows])
    (folder / "task.yaml").write_text(yaml.safe_dump(spec))
    return folder / "task.yaml"


@pytest.fixture(scope="session")
def rt_small(tmp_path_factory) -> Path:
    """rt-sentiment with 24 training and 12 eval rows (shared by the tests that only need a valid task)."""
    return small_task(tmp_path_factory.mktemp("rt-small"))
