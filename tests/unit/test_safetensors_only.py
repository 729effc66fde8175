"""Adapter weights are read from safetensors only: a pickled adapter_model.bin is never unpickled.

The .bin below creates a marker file when unpickled. An adapter folder holding it (and a valid
adapter_config.json, no safetensors) goes to deploy's check, to the merge and to evaluation: each
refuses it with one line, and the marker never appears.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from merge_helpers import make_adapter, write_merge_yaml

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.serve.adapters import check_adapter
from taskloom.train.evaluate import load_adapter_model


class _Armed:
    """Unpickling this opens (creates) the marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_only_adapter(folder: Path, marker: Path, config_from: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text((config_from / "adapter_config.json").read_text())
    (folder / "adapter_model.bin").write_bytes(pickle.dumps({"weights": _Armed(marker)}))
    (folder / "task.json").write_text(json.dumps({"task": "rt-sentiment", "type": "classification", "base": "minilm"}))
    return folder


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_adapter(tmp_path_factory.mktemp("good") / "adapter", seed=1)


@pytest.fixture
def armed(tmp_path, good) -> tuple[Path, Path]:
    marker = tmp_path / "UNPICKLED"
    return pickle_only_adapter(tmp_path / "evil", marker, good), marker


def test_the_pickle_is_armed(tmp_path):
    """The payload works: loading it does create the marker, so its absence below means something."""
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Armed(probe)))
    assert probe.exists()


def test_deploy_check_refuses(armed):
    folder, marker = armed
    with pytest.raises(UserError, match="adapter_model.safetensors"):
        check_adapter(folder, name="evil")
    assert not marker.exists()


def test_evaluation_refuses(armed):
    folder, marker = armed
    with pytest.raises(UserError, match="safetensors"):
        load_adapter_model("minilm", folder)
    assert not marker.exists()


def test_eval_cli_refuses(armed, rt_small, capsys):
    folder, marker = armed
    assert main(["eval", str(rt_small), "--adapter", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "safetensors" in err
    assert not marker.exists()


def test_merge_refuses(armed, good, tmp_path, capsys):
    folder, marker = armed
    cfg = write_merge_yaml(tmp_path / "merge.yaml", "linear", [(good, 0.5), (folder, 0.5)])
    out = tmp_path / "merged"
    assert main(["merge", str(cfg), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "adapter_model.safetensors" in err
    assert not out.exists() or not any(out.iterdir())
    assert not marker.exists()
