"""`taskloom merge` killed with SIGKILL while it writes, and run out of disk: readers of --out see the
previous merge or the new one, whole, never a part; a re-run gives what an uninterrupted run gives."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from faultkit import assert_whole, can_mount_tmpfs, digests, finish, kill9, taskloom, unmount, wait_for

pytestmark = pytest.mark.e2e  # tier: several merge processes of MiniLM (90 MB out each)

NOT_COMPARED = ("merge_report.json", "README.md")  # they hold times and paths


def make_adapter(folder: Path, seed: int) -> Path:
    """A real PEFT LoRA adapter on MiniLM with random non-zero A and B."""
    import torch
    from peft import LoraConfig, get_peft_model

    from taskloom.models.encoder import cached_encoder

    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(cached_encoder("minilm")[1]),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], init_lora_weights=False))  # fmt: skip
    model.save_pretrained(str(folder))
    (folder / "task.json").write_text(json.dumps({"task": folder.name, "type": "retrieval", "base": "minilm"}))
    return folder


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-faults")
    a, b = make_adapter(root / "a", 0), make_adapter(root / "b", 1)

    def config(name: str, wa: float) -> Path:
        doc = {"method": "linear", "base_model": "minilm", "adapters": [{"path": str(a), "weight": wa},
                                                                         {"path": str(b), "weight": 1.0}]}  # fmt: skip
        (root / name).write_text(yaml.safe_dump(doc))
        return root / name

    new, old = config("new.yaml", 1.0), config("old.yaml", 0.5)
    clean = root / "clean"
    code, _, err = finish(taskloom("merge", str(new), "--out", str(clean)))
    assert code == 0, err
    return {"root": root, "new": new, "old": old, "clean": digests(clean, NOT_COMPARED)}


def staged(parent: Path, name: str, what: str):
    """The staging folder of a merge into parent/name, once it holds `what` (any / weights / report)."""
    for d in parent.glob(f".{name}.staging.*"):
        files = list(d.rglob("*"))
        if what == "any" or (what == "weights" and any(f.suffix == ".safetensors" and f.stat().st_size
                                                       for f in files if f.exists())):  # fmt: skip
            return d
        if what == "report" and (d / "merge_report.json").exists():
            return d
    return None


def test_kill_9_while_merging_leaves_the_previous_output_whole(configs, evidence, tmp_path):
    out = tmp_path / "merged"
    code, _, err = finish(taskloom("merge", str(configs["old"]), "--out", str(out)))
    assert code == 0, err
    previous = digests(out)
    cases = 0
    for point in ("any", "weights", "report"):
        proc = taskloom("merge", str(configs["new"]), "--out", str(out))
        try:
            wait_for(lambda p=proc, k=point: staged(tmp_path, "merged", k) or p.poll() is not None, point, 300)
        finally:
            kill9(proc)
        cases += 1
        assert_whole(out)  # the old merge or (killed after its rename) the new one: never a mix
        now = digests(out)
        assert now == previous or digests(out, NOT_COMPARED) == configs["clean"], f"killed at {point}: a mix"
    code, _, err = finish(taskloom("merge", str(configs["new"]), "--out", str(out)))
    assert code == 0, err
    assert digests(out, NOT_COMPARED) == configs["clean"]  # the re-run converges
    assert assert_whole(out) > 3
    assert staged(tmp_path, "merged", "any") is None  # the killed merges' staging folders went with the re-run
    evidence("merge", "kill -9 while writing (staging created, weights half written, before publish)", cases,
             "--out stays the previous merge, whole; the re-run equals an uninterrupted merge and removes the"
             " killed merges' staging folders")  # fmt: skip


def test_disk_full_is_one_line_exit_2_and_nothing_changed(configs, evidence, tmp_path):
    disk = tmp_path / "small"
    reason = can_mount_tmpfs(disk, "20m")
    if reason:
        pytest.skip(reason)
    try:
        out = disk / "merged"
        code, stdout, err = finish(taskloom("merge", str(configs["new"]), "--out", str(out)))
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("error: --out") and "no space left" in err, err
        assert "Traceback" not in err and not out.exists()
        assert list(disk.iterdir()) == []  # no staging left behind either
    finally:
        unmount(disk)
    evidence("merge", "disk full (20 MB tmpfs as --out)", 1, "exit 2, one line; nothing left on the disk")
