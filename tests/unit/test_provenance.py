"""The one provenance reader: which base an adapter was trained on, never a guessed default."""

import json

import pytest

from taskloom.errors import UserError
from taskloom.merge.provenance import recorded_base, trained_base
from taskloom.steps import merge_step


def _adapter(folder, task=None, config=None):
    folder.mkdir(parents=True)
    if task is not None:
        (folder / "task.json").write_text(json.dumps(task))
    if config is not None:
        (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_task_json_first_then_the_peft_config(tmp_path):
    both = _adapter(tmp_path / "a", {"base": "smollm2"}, {"base_model_name_or_path": "minilm"})
    config_only = _adapter(tmp_path / "b", {"task": "t"}, {"base_model_name_or_path": "/models/enc"})
    assert trained_base(both) == "smollm2"
    assert trained_base(config_only) == "/models/enc"


def test_an_adapter_that_does_not_say_is_an_error_naming_it(tmp_path):
    silent = _adapter(tmp_path / "c", {"task": "t"}, {"base_model_name_or_path": None})
    assert recorded_base(silent) is None
    with pytest.raises(UserError, match=f"^{silent}: no recorded base model"):
        trained_base(silent)


def test_merge_step_refuses_an_adapter_without_a_recorded_base(tmp_path):
    _adapter(tmp_path / "run" / "adapter", config={"r": 8})
    with pytest.raises(UserError, match="no recorded base model"):
        merge_step([str(tmp_path / "run")], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
