"""The meta-LoRA task bank: counts per tier, descriptions, disjoint splits, the held-out overlap check,
determinism. Built from the real offline corpora (quick size)."""

import copy
import hashlib
import json
import os
import subprocess
import sys

import pytest

from taskloom.cli import main
from taskloom.metalora.bank import (
    BANK_TIERS,
    FAR_FAMILY,
    QUICK,
    assert_no_overlap,
    build_tasks,
    normalise,
    overlap,
    remove_overlap,
    row_texts,
    text_hash,
)


@pytest.fixture(scope="module")
def built():
    return build_tasks(seed=7, quick=True)


def _by_tier(tasks, *tiers):
    return [t for t in tasks if t.tier in tiers]


def test_counts_per_tier(built):
    tasks, removed = built
    bank, val = _by_tier(tasks, *BANK_TIERS), _by_tier(tasks, "val")
    held = _by_tier(tasks, "near", "far")
    assert len(bank) >= 40
    assert 6 <= len(val) <= 10
    assert len(held) >= 25
    assert _by_tier(tasks, "near") and _by_tier(tasks, "far")
    assert sum(len(t.eval) >= 200 for t in held) >= 15  # most held-out tasks can count in gap closure
    assert removed > 0  # cross-corpus duplicates and pair words exist: the check has work to do
    assert {t.type for t in bank} == {"classification", "pair_similarity"}


def test_far_family_is_left_out_of_the_bank(built):
    tasks, _ = built
    assert {t.corpus for t in _by_tier(tasks, "far")} == {FAR_FAMILY}
    assert FAR_FAMILY not in {t.corpus for t in _by_tier(tasks, *BANK_TIERS)}
    # near tasks come from corpus families the bank has
    assert {t.corpus for t in _by_tier(tasks, "near")} <= {t.corpus for t in _by_tier(tasks, *BANK_TIERS)}


def test_descriptions_are_written_from_the_real_names(built):
    tasks, _ = built
    descriptions = [t.description for t in tasks]
    assert all(d.strip() and d.endswith(".") for d in descriptions)
    assert len(set(descriptions)) == len(descriptions)
    assert len({t.name for t in tasks}) == len(tasks)
    for t in tasks:
        for label in t.labels or []:
            assert label.lower() in t.description.lower(), (t.name, label)


def test_splits_are_disjoint_capped_and_labelled(built):
    tasks, _ = built
    for t in tasks:
        keys = {
            s: {"\x1f".join(sorted(normalise(x) for x in row_texts(r))) for r in getattr(t, s)}
            for s in ("train", "val", "eval")
        }
        assert not keys["train"] & keys["eval"], t.name
        assert not keys["train"] & keys["val"], t.name
        assert not keys["val"] & keys["eval"], t.name
        assert len(t.train) <= QUICK.train and len(t.val) <= QUICK.val
        assert len(t.eval) <= (QUICK.eval if t.tier in BANK_TIERS else QUICK.held_eval)
        assert min(t.rows().values()) > 0
        if t.labels:
            assert {r["label"] for r in t.train} == set(t.labels)
            assert {r["label"] for r in t.eval} == set(t.labels)
        else:
            assert all(0.0 <= r["score"] <= 1.0 for r in t.train + t.eval)


def test_no_held_out_eval_text_in_bank_data(built):
    tasks, _ = built
    assert_no_overlap(tasks)
    held = {text_hash(x) for t in _by_tier(tasks, "near", "far") for r in t.eval for x in row_texts(r)}
    for t in _by_tier(tasks, *BANK_TIERS):
        for r in t.train + t.val + t.eval:
            assert not any(text_hash(x) in held for x in row_texts(r))


def test_overlap_check_catches_a_planted_duplicate(built):
    tasks = copy.deepcopy(built[0])
    far = _by_tier(tasks, "far")[0]
    bank = _by_tier(tasks, "seen")[0]
    text = far.eval[0]["text"]
    # the same text as a user might paste it: other case, spacing and punctuation
    bank.train.append({"text": f"  {text.upper()}!! ", "label": bank.labels[0]})
    found = overlap(tasks)
    assert [(name, split) for name, split, _ in found] == [(bank.name, "train")]
    with pytest.raises(AssertionError, match=bank.name):
        assert_no_overlap(tasks)
    assert remove_overlap(tasks) == 1
    assert_no_overlap(tasks)


def test_normalised_hash():
    assert text_hash("Hello,   World!") == text_hash("hello world")
    assert text_hash("hello world") != text_hash("hello words")


def test_deterministic_from_the_seed(built):
    again, removed = build_tasks(seed=7, quick=True)
    assert removed == built[1]
    assert [(t.name, t.tier, t.description, t.train, t.val, t.eval) for t in again] == [
        (t.name, t.tier, t.description, t.train, t.val, t.eval) for t in built[0]
    ]
    other, _ = build_tasks(seed=8, quick=True)
    rt = {t.name: t for t in other}["rt-sentiment"]
    assert rt.train != {t.name: t for t in built[0]}["rt-sentiment"].train


DIGEST = (
    "import hashlib, json; from taskloom.metalora.bank import build_tasks; "
    "tasks, _ = build_tasks(seed=7, quick=True); "
    "print(hashlib.sha256(json.dumps([(t.name, t.train, t.val, t.eval) for t in tasks]).encode()).hexdigest())"
)


def test_deterministic_across_processes(built):
    """Sets iterate in an order that changes with the hash seed: the rows must not."""
    here = hashlib.sha256(json.dumps([(t.name, t.train, t.val, t.eval) for t in built[0]]).encode()).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", DIGEST], env=env, capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here


def test_cli_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "bank"
    f.write_text("x")
    assert main(["metalora", "build", "--out", str(f), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {f}: exists and is not a folder"]
    assert f.read_text() == "x"


def test_cli_out_is_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["metalora", "build", "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty and not a bank being built" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
