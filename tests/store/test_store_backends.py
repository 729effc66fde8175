"""The task store on both backends: local files, and PostgreSQL + Redis (real servers, tests/store/conftest.py).

The same tests run on each: what is written is read back online at once, the history keeps every version,
and writers in several processes at once neither fail, nor tear a record, nor leave the online value
behind the history."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taskloom.errors import UserError
from taskloom.store.backends import POSTGRES_ENV, REDIS_ENV, Cluster, Local
from taskloom.store.feature_store import TaskStore

pytestmark = pytest.mark.e2e

CENTROID = np.random.default_rng(0).normal(size=384).astype(np.float32) / 20
PROFILE = {
    "task_id": "rt-sentiment",
    "type": "classification",
    "rows": 3000,
    "label_entropy": 0.9991,
    "mean_length": 121.37,
    "centroid": CENTROID.tolist(),
}
METRICS = {"metric": "accuracy", "base": 0.479, "tuned": 0.781}


@pytest.fixture(params=["local", "cluster"])
def config(request, tmp_path) -> dict:
    """{"name", "backend", "env"}: a fresh store location of each kind, and the environment naming it."""
    if request.param == "local":
        return {"name": "local", "backend": Local(), "env": {}}
    postgres, redis = request.getfixturevalue("cluster_urls")
    return {"name": "cluster", "backend": Cluster(postgres, redis), "env": {POSTGRES_ENV: postgres, REDIS_ENV: redis}}


def test_round_trip_online_and_history(config, tmp_path):
    store = TaskStore(tmp_path / "repo", backend=config["backend"])
    store.write_task_profile(PROFILE)
    got = store.read_task("rt-sentiment")
    assert (got["rows"], got["type"], got["mean_length"]) == (3000, "classification", pytest.approx(121.37, abs=1e-12))
    np.testing.assert_array_equal(np.asarray(got["centroid"], dtype=np.float32), CENTROID)

    store.write_adapter_metrics("rt-v1", "rt-sentiment", METRICS)
    assert store.read_adapter("rt-v1")["merged"] is None
    store.write_adapter_metrics("rt-v1", "rt-sentiment", {**METRICS, "merged": 0.774})
    assert store.read_adapter("rt-v1")["merged"] == pytest.approx(0.774)

    rng = np.random.default_rng(1)
    v1, v2 = rng.normal(size=(120, 384)).astype(np.float32), rng.normal(size=(80, 384)).astype(np.float32)
    store.write_reference("rt-sentiment", "rt-v1", v1)
    store.write_reference("rt-sentiment", "rt-v2", v2)
    np.testing.assert_array_equal(store.read_reference("rt-sentiment"), v2)  # online: the latest
    np.testing.assert_array_equal(store.read_reference("rt-sentiment", "rt-v1"), v1)  # history: a version
    versions = store.reference_versions("rt-sentiment")
    assert [(v["adapter_id"], v["rows"], v["dims"]) for v in versions] == [("rt-v1", 120, 384), ("rt-v2", 80, 384)]
    assert versions[0]["written"] < versions[1]["written"]

    again = TaskStore(
        tmp_path / "other-folder" if config["name"] == "cluster" else tmp_path / "repo", backend=config["backend"]
    )
    assert again.read_task("rt-sentiment")["rows"] == 3000
    assert again.read_reference_record("rt-sentiment")["adapter_id"] == "rt-v2"

    entity = pd.DataFrame({"adapter_id": ["rt-v1"], "event_timestamp": [pd.Timestamp.now(tz="UTC")]})
    df = again.fs.get_historical_features(entity_df=entity, features=["adapter_metrics:merged"]).to_df()
    assert float(df["merged"].iloc[0]) == pytest.approx(0.774)  # the offline store, through Feast

    with pytest.raises(UserError, match="no task_profile for task 'nope'"):
        store.read_task("nope")
    with pytest.raises(UserError, match="no drift reference for task 'rt-sentiment' and adapter 'v9'"):
        store.read_reference("rt-sentiment", "v9")


def test_the_environment_chooses_the_backend(config, tmp_path, monkeypatch):
    for k in (POSTGRES_ENV, REDIS_ENV):
        monkeypatch.delenv(k, raising=False)
        monkeypatch.delenv(f"{k}_FILE", raising=False)
    for k, v in config["env"].items():  # as the chart mounts the Secret: files named by NAME_FILE
        (tmp_path / k).write_text(v + "\n")
        monkeypatch.setenv(f"{k}_FILE", str(tmp_path / k))
    store = TaskStore(tmp_path / "repo")
    assert store.backend == config["backend"]
    store.write_task_profile(PROFILE)
    assert TaskStore(tmp_path / "repo").read_task("rt-sentiment")["rows"] == 3000
    if config["name"] == "cluster":  # nothing written beside the repository, no password anywhere in it
        assert not (tmp_path / "repo").exists()
        assert "s3cret" not in repr(store.backend)


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    from taskloom.store.feature_store import TaskStore

    def wait_for(name):
        while not (sync / name).exists():
            time.sleep(0.01)

    repo, who, rounds, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    store = TaskStore(repo)
    store.fs  # open (and on a new repository: apply) before the start, so the writes overlap
    (sync / f"{who}.ready").touch()
    for run in (1, 2):  # the second run writes the same again
        wait_for(f"go-{run}")
        store.write_task_profile({"task_id": f"task-{who}", "type": "classification", "rows": 10 + who,
                                  "label_entropy": 1.0, "mean_length": float(who), "centroid": [float(who)] * 384})
        for r in range(rounds):
            # the same task from every writer; rows and dims differ per writer, so a torn record shows
            store.write_reference("shared", f"w{who}-r{r}", np.full((2 + who, 8 + who), 100 * who + r, np.float32))
            store.write_adapter_metrics("shared-adapter", "shared", {"metric": "accuracy", "base": 0.5, "tuned": who})
        (sync / f"{who}.done-{run}").touch()
""")


def _read_while(store: TaskStore, stop: threading.Event, out: list) -> None:
    """Read the shared task's reference until `stop`; a record must be whole: its shape and values say whose."""
    try:
        while not stop.is_set():
            try:
                rec = store.read_reference_record("shared")
            except UserError as e:
                assert "no drift_reference" in str(e), e  # before the first write
                continue
            who, r = (int(x[1:]) for x in rec["adapter_id"].split("-"))
            emb = rec["embeddings"]
            assert emb.shape == (2 + who, 8 + who), (rec["adapter_id"], emb.shape)
            assert (emb == 100 * who + r).all(), rec["adapter_id"]
            out.append(rec["adapter_id"])
            time.sleep(0.002)
    except BaseException as e:  # handed to the test's thread
        out.append(e)


def _wait(sync: Path, pattern: str, count: int, procs: list) -> None:
    deadline = time.monotonic() + 240
    while len(list(sync.glob(pattern))) < count:
        failed = [p for p in procs if p.poll() not in (None, 0)]
        assert not failed and time.monotonic() < deadline, [p.communicate()[1][-1500:] for p in failed]
        time.sleep(0.02)


def test_parallel_writers_and_a_racing_reader(config, tmp_path):
    """Writers in separate processes (as pipeline steps on several pods) on the same and on their own tasks,
    all released at once, and a reader (in this process) racing them; then the same writes again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_FEAST_")}
    env.update(config["env"])
    repo, sync, writers, rounds = tmp_path / "repo", tmp_path / "sync", 3, 4
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repo), str(i), str(rounds), str(sync)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(writers)
    ]
    store, stop, seen = TaskStore(repo, backend=config["backend"]), threading.Event(), []
    reader = threading.Thread(target=_read_while, args=(store, stop, seen))
    try:
        _wait(sync, "*.ready", writers, procs)
        store.fs  # noqa: B018 (open before the start)
        reader.start()
        (sync / "go-1").touch()
        _wait(sync, "*.done-1", writers, procs)
        stop.set()
        reader.join()
        assert seen and not [e for e in seen if isinstance(e, BaseException)], seen[-1]
        assert len(set(seen)) > 1  # it read while the record changed
        first = {i: store.read_task(f"task-{i}") for i in range(writers)}
        assert [first[i]["rows"] for i in range(writers)] == [10 + i for i in range(writers)]
        assert all(first[i]["centroid"] == [float(i)] * 384 for i in range(writers))

        def agrees_with_history() -> int:
            versions = store.reference_versions("shared")
            assert store.read_reference_record("shared")["adapter_id"] == versions[-1]["adapter_id"]  # the newest
            assert store.read_adapter("shared-adapter")["tuned"] in range(writers)
            return len(versions)

        assert agrees_with_history() == writers * rounds
        (sync / "go-2").touch()
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), [e[-1500:] for e in errors]
        assert {i: store.read_task(f"task-{i}") for i in range(writers)} == first  # converges
        assert agrees_with_history() == 2 * writers * rounds
    finally:
        stop.set()
        for p in procs:
            p.kill()
            p.wait()


def test_cluster_settings_are_checked(tmp_path, monkeypatch):
    from taskloom.store.backends import from_env

    good_pg, good_redis = "postgresql://u:p@db:5432/features", "redis://:p@cache:6379/0"
    assert from_env({}) == Local()
    assert from_env({POSTGRES_ENV: good_pg, REDIS_ENV: good_redis}) == Cluster(good_pg, good_redis)
    cases = {
        "is set but TASKLOOM_FEAST_REDIS_URL": {POSTGRES_ENV: good_pg},
        "not both": {POSTGRES_ENV: good_pg, f"{POSTGRES_ENV}_FILE": "/x", REDIS_ENV: good_redis},
        "no database in the URL": {POSTGRES_ENV: "postgresql://u:p@db:5432", REDIS_ENV: good_redis},
        "got scheme 'mysql'": {POSTGRES_ENV: "mysql://u:p@db/x", REDIS_ENV: good_redis},
        "sslmode 'maybe'": {POSTGRES_ENV: good_pg + "?sslmode=maybe", REDIS_ENV: good_redis},
        "the database 'x' is not a number": {POSTGRES_ENV: good_pg, REDIS_ENV: "redis://cache:6379/x"},
        "must not contain ','": {POSTGRES_ENV: good_pg, REDIS_ENV: "redis://:a,b@cache"},
        "_FILE=/: Is a directory": {POSTGRES_ENV + "_FILE": "/", REDIS_ENV: good_redis},
        # a file that is not there is an optional Secret the pipelines mount: unset, so half a configuration
        "is set but TASKLOOM_FEAST_POSTGRES_URL": {POSTGRES_ENV + "_FILE": "/nonexistent/url", REDIS_ENV: good_redis},
    }
    for message, env in cases.items():
        with pytest.raises(UserError, match=message):
            from_env(env)
    c = Cluster("postgresql://me:pa%2Css@db.example:5433/feat?sslmode=require", "rediss://:pw@cache:6380/2")
    assert c.repo_config()["registry"]["path"] == "postgresql+psycopg://me:pa%2Css@db.example:5433/feat?sslmode=require"
    assert c.repo_config()["offline_store"]["password"] == "pa,ss"
    assert c.repo_config()["online_store"]["connection_string"] == "cache:6380,db=2,password=pw,ssl=true"
    assert "pw" not in repr(c) and "pa,ss" not in repr(c)


def test_unreachable_servers_are_one_line(tmp_path, cluster_urls):
    postgres, redis = cluster_urls
    with pytest.raises(UserError, match=r"cannot reach PostgreSQL at 127\.0\.0\.1:1/nowhere"):
        TaskStore(tmp_path, backend=Cluster("postgresql://u:p@127.0.0.1:1/nowhere", redis)).read_task("t")
    wrong_password = re.sub(r"//:[^@]+@", "//:wrong@", redis)
    assert wrong_password != redis
    with pytest.raises(UserError, match="cannot reach Redis: invalid username-password"):
        TaskStore(tmp_path, backend=Cluster(postgres, wrong_password)).write_task_profile(PROFILE)


def test_feature_server_on_the_cluster_backend(cluster_urls, tmp_path):
    """`python -m taskloom.store.serve` (the chart's Feast server) serves what a writer wrote, from the
    environment's PostgreSQL and Redis, with nothing on disk."""
    import json
    import socket
    import urllib.request

    postgres, redis = cluster_urls
    TaskStore(tmp_path / "writer", backend=Cluster(postgres, redis)).write_task_profile(PROFILE)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_FEAST_")},
        POSTGRES_ENV: postgres,
        REDIS_ENV: redis,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "taskloom.store.serve", "--repo", str(tmp_path / "served"), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        body = json.dumps(
            {"features": ["task_profile:rows", "task_profile:type"], "entities": {"task_id": ["rt-sentiment"]}}
        ).encode()
        deadline = time.monotonic() + 180
        while True:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/get-online-features",
                    data=body,
                    headers={"Content-Type": "application/json"},
                )
                with urllib.request.urlopen(req, timeout=5) as resp:
                    out = json.load(resp)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.communicate()[1][-1500:]
                time.sleep(0.2)
        values = {name: r["values"][0] for name, r in zip(out["metadata"]["feature_names"], out["results"])}
        assert values == {"task_id": "rt-sentiment", "rows": 3000, "type": "classification"}
        assert not (tmp_path / "served").exists()
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_with_half_a_cluster_configuration_is_one_line(tmp_path):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKLOOM_FEAST_")},
        POSTGRES_ENV: "postgresql://u:p@db/x",
    }
    r = subprocess.run(
        [sys.executable, "-m", "taskloom.store.serve", "--repo", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert "TASKLOOM_FEAST_REDIS_URL" in r.stderr
