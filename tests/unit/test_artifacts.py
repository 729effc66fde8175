"""Atomic artifact writes: the file appears whole or not at all, with a matching sha256 beside it."""

import os
import stat
from pathlib import Path

import pytest
import torch

from taskloom.artifacts import publish_dir, save_safetensors, sha256_file, staging_dir, verify_digest, write_json


def test_write_json_is_whole_with_digest_and_usual_mode(tmp_path):
    path = write_json(tmp_path / "a" / "m.json", {"x": 1})
    assert path.read_text() == '{\n  "x": 1\n}\n'
    assert verify_digest(path)
    assert (tmp_path / "a" / "m.json.sha256").read_text() == f"{sha256_file(path)}  m.json\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()
    path.write_text("tampered")
    assert not verify_digest(path)


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    write_json(tmp_path / "m.json", {"v": 1})
    with pytest.raises(AttributeError):  # a value that is no tensor fails inside the write
        save_safetensors(tmp_path / "m.json", {"w": "not a tensor"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.json.sha256"]
    assert verify_digest(tmp_path / "m.json")


def test_safetensors_round_trip_and_published_folder(tmp_path):
    from safetensors.torch import load_file

    stage = staging_dir(tmp_path / "out")
    save_safetensors(stage / "w.safetensors", {"w": torch.arange(6.0).reshape(2, 3)})
    final = publish_dir(stage, tmp_path / "out")
    assert torch.equal(load_file(final / "w.safetensors")["w"], torch.arange(6.0).reshape(2, 3))
    assert verify_digest(final / "w.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_killed_writers_staging_folder_is_removed_by_the_next_one(tmp_path):
    import subprocess
    import sys

    final = tmp_path / "merged"
    # a writer killed with SIGKILL: its staging folder stays; the process is gone
    code = f"from taskloom.artifacts import staging_dir; import os; print(staging_dir({str(final)!r})); os._exit(0)"
    dead = Path(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip())
    (dead / "model.safetensors").write_bytes(b"half")
    live = staging_dir(final)  # this process: alive, so never swept
    namespace, pid = dead.name.split(".")[-3:-1]
    other = tmp_path / f".merged.staging.another-pod.{namespace}.{pid}.abc"  # same pid on another host: not ours
    other.mkdir()
    legacy = tmp_path / ".merged.staging.k3j4l5m6"  # a name without a writer: left alone
    legacy.mkdir()
    fresh = staging_dir(final)
    assert not dead.exists()
    assert live.is_dir() and fresh.is_dir() and other.is_dir() and legacy.is_dir()
