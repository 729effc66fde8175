"""Feast writes (profile and drift reference, history then online store) killed with SIGKILL: the
repository stays readable and a re-run leaves the same online features as an uninterrupted run."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from faultkit import ROOT, kill9, visible_files, wait_for

from taskloom.store.feature_store import TaskStore

pytestmark = pytest.mark.e2e  # tier: profile processes (MiniLM) killed mid-write

ROUNDS = 3


def profile(task_yaml: Path, out: Path, repo: Path) -> subprocess.Popen:
    """`profile_step` with a Feast repository in its own process: profile + reference written to Feast,
    ROUNDS times (a materialisation that is busy long enough to be killed inside)."""
    code = (
        "import sys\nfrom taskloom.environment import apply_local_env\napply_local_env()\n"
        "from taskloom.specs import ProfileSpec\nfrom taskloom.steps import profile_step\n"
        f"for i in range({ROUNDS}):\n"
        f"    profile_step({str(task_yaml.parent)!r}, {str(out)!r}, ProfileSpec(feature_repo={str(repo)!r}))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def readable(repo: Path) -> int:
    """Every history file reads as Parquet, the online SQLite passes its integrity check."""
    files = visible_files(repo)
    for p in files:
        if p.suffix == ".parquet":
            pd.read_parquet(p)
        elif p.name == "registry.db":  # Feast's file registry: a protobuf
            from feast.protos.feast.core.Registry_pb2 import Registry

            assert Registry.FromString(p.read_bytes()).feature_views, p
        elif p.suffix == ".db":
            with sqlite3.connect(p) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", p
    return len(files)


def references(repo: Path) -> int:
    path = repo / "data" / "drift_reference.parquet"
    return len(pd.read_parquet(path)) if path.exists() else 0


def online(repo: Path, task: str) -> tuple:
    store = TaskStore(repo)
    rec = store.read_reference_record(task)
    row = store.read_task(task)
    return rec["adapter_id"], np.asarray(rec["embeddings"]).round(6).tobytes(), row.get("rows")


def test_kill_9_while_writing_features_then_rerun_converges(rt_small, tmp_path, evidence):
    clean = tmp_path / "clean"
    p = profile(rt_small, tmp_path / "clean-out", clean)
    assert p.wait(600) == 0, p.stderr.read()
    p.stderr.close()
    expected = online(clean, "rt-sentiment")

    repo = tmp_path / "killed"
    cases = 0
    for point in ("history", "reference", "second round"):
        before = references(repo)
        proc = profile(rt_small, tmp_path / "out", repo)

        def reached(k=point, pr=proc, n0=before) -> bool:
            if pr.poll() is not None:
                return True
            if k == "history":
                data = repo / "data"
                return any(data.glob(".*.parquet.tmp")) or (data / "task_profile.parquet").exists()
            return references(repo) >= n0 + (1 if k == "reference" else 2)

        try:
            wait_for(reached, f"feast write: {point}", 600)
        finally:
            kill9(proc)
        cases += 1
        assert readable(repo) > 0
    p = profile(rt_small, tmp_path / "out", repo)
    assert p.wait(600) == 0, p.stderr.read()
    p.stderr.close()
    assert readable(repo) > 0
    assert online(repo, "rt-sentiment") == expected  # the newest row online: as if never killed
    evidence("feast", "kill -9 during history append / online write / between writes", cases,
             "history and online store readable; re-run gives the uninterrupted run's online features")  # fmt: skip
