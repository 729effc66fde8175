"""Hot-loading versions into a running Triton: canary, switch, smoke, rollback; no request dropped.

One server (explicit model control) is shared by the module, and the tests run in order: each
deploy builds on the versions the previous tests left, as a real model's history would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import numpy as np
import pytest
from serve_helpers import TEXTS, make_adapter, reference_adapter

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.models.encoder import embed_texts
from taskloom.serve.client import TritonClient
from taskloom.serve.deploy import SMOKE_TEXTS, DeployError, deploy, rollback
from taskloom.serve.launcher import TritonServer, free_port

pytestmark = pytest.mark.e2e  # tier: a real Triton server


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """senti (head fresh/rotten), qa (no head), senti2 (another senti), broken (NaN weights, valid sha256)."""
    from safetensors.torch import load_file, save_file

    from taskloom.artifacts import write_digest

    root = tmp_path_factory.mktemp("adapters")
    out = {"senti": make_adapter(root, "senti", 1, ["fresh", "rotten"]), "qa": make_adapter(root, "qa", 2),
           "senti2": make_adapter(root, "senti2", 3, ["fresh", "rotten"])}
    broken = root / "broken"
    shutil.copytree(out["qa"], broken)
    f = broken / "adapter_model.safetensors"
    save_file({k: v * float("nan") if "lora_B" in k else v for k, v in load_file(f).items()}, str(f))
    write_digest(f)
    out["broken"] = broken
    return out


@pytest.fixture(scope="module")
def refs(adapters):
    out = {k: reference_adapter(v, TEXTS) for k, v in adapters.items() if k != "broken"}
    out[None] = (embed_texts(TEXTS), None, None)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server on an empty repository, then the first deploy: MiniLM as version 1."""
    repo = tmp_path_factory.mktemp("repo")
    with TritonServer(repo, model_control="explicit", models=["*"], log_dir=tmp_path_factory.mktemp("logs")) as s:
        report = deploy(repo, s.http_url, "minilm")
        yield s, repo, report


def state(repo):
    return json.loads((repo / "taskloom" / "versions.json").read_text())


def serving_version(server) -> int:
    with TritonClient(server.http_url) as c:
        ready = [m for m in c.repository_index() if m["name"] == "taskloom" and m.get("state") == "READY"]
    assert len(ready) == 1, ready
    return int(ready[0]["version"])


def check(server, refs, adapter, key=None):
    with TritonClient(server.http_url) as c:
        out = c.infer(TEXTS, adapter=adapter)
    emb, labels, _ = refs[key if key is not None else adapter]
    assert (out["embedding"] * emb).sum(1).min() >= 0.999
    assert out["label"] == labels


def test_first_deploy_serves_version_one(served, refs):
    server, repo, report = served
    assert report["status"] == "serving" and report["version"] == 1 and report["previous"] is None
    assert serving_version(server) == 1 and state(repo)["serving"] == 1
    check(server, refs, None)


def test_adding_an_adapter_under_steady_load_drops_no_request(served, adapters, refs):
    server, repo, _ = served
    stop, lock = threading.Event(), threading.Lock()
    counts = {"ok": 0, "failed": 0, "wrong": 0, "during": 0}
    errors, deploying = [], threading.Event()

    def client_loop(k):
        with TritonClient(server.grpc_url, protocol="grpc", retries=0) as c:
            i = k
            while not stop.is_set():
                j = i % len(TEXTS)
                try:
                    emb = c.infer([TEXTS[j]])["embedding"][0]
                    key = "ok" if float(emb @ refs[None][0][j]) >= 0.999 else "wrong"
                except Exception as e:  # counted: the assertion below says how many and why
                    key = "failed"
                    errors.append(repr(e))
                with lock:
                    counts[key] += 1
                    counts["during"] += deploying.is_set() and key == "ok"
                i += 1
                time.sleep(0.01)

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    try:
        expect = reference_adapter(adapters["senti"], list(SMOKE_TEXTS))[1]
        deploying.set()
        report = deploy(repo, server.http_url, adapters["senti"], expect_labels=expect)
        deploying.clear()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert counts["failed"] == 0 and counts["wrong"] == 0, (counts, errors[:3])
    assert counts["during"] > 0
    assert report["status"] == "serving" and report["version"] == 2 and report["adapters"] == ["senti"]
    assert report["canary"]["senti"]["labels"] == expect == report["smoke"]["senti"]["labels"]
    assert serving_version(server) == 2
    check(server, refs, "senti")
    check(server, refs, None)
    # the base weights of version 2 are version 1's file, linked, not copied
    v1, v2 = (repo / "taskloom" / v / "weights" / "model.safetensors" for v in ("1", "2"))
    assert os.stat(v1).st_ino == os.stat(v2).st_ino
    assert not (repo / "taskloom.candidate").exists()


def test_add_replace_and_remove_adapters_without_restart(served, adapters, refs, capsys):
    server, repo, _ = served
    pid = server.pid
    assert main(["deploy", str(adapters["qa"]), "--repo", str(repo), "--url", server.http_url, "--no-canary"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == 3 and report["adapters"] == ["qa", "senti"]
    check(server, refs, "qa")
    report = deploy(repo, server.http_url, adapters["senti2"], adapter_name="senti", remove=["qa"], canary=False)
    assert report["version"] == 4 and report["adapters"] == ["senti"]
    check(server, refs, "senti", key="senti2")
    with TritonClient(server.http_url) as c, pytest.raises(UserError, match="adapter 'qa': not served"):
        c.infer(["x"], adapter="qa")
    assert server.pid == pid and server.alive
    assert sorted(os.listdir(repo / "taskloom")) == ["1", "2", "3", "4", "config.pbtxt", "versions.json", "versions.json.sha256"]


def test_digest_mismatch_is_refused_before_anything_is_written(served, adapters, refs, tmp_path):
    server, repo, _ = served
    bad = tmp_path / "qa"
    shutil.copytree(adapters["qa"], bad)
    (bad / "adapter_model.safetensors").write_bytes((bad / "adapter_model.safetensors").read_bytes()[:-1] + b"\0")
    with pytest.raises(UserError, match="sha256 does not match adapter_model.safetensors.sha256"):
        deploy(repo, server.http_url, bad)
    with pytest.raises(UserError, match=r"--remove nope: not served \(adapters: senti\)"):
        deploy(repo, server.http_url, remove=["nope"])
    no_weights = tmp_path / "model"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no safetensors weights"):
        deploy(repo, server.http_url, no_weights)
    with pytest.raises(UserError, match=f"127.0.0.1:{(port := free_port())}"):
        deploy(repo, f"http://127.0.0.1:{port}", adapters["qa"], timeout=2)
    assert sorted(p for p in os.listdir(repo / "taskloom") if p.isdigit()) == ["1", "2", "3", "4"]
    assert serving_version(server) == 4 and state(repo)["serving"] == 4
    check(server, refs, "senti", key="senti2")


def test_a_broken_version_is_stopped_by_the_canary(served, adapters, refs):
    server, repo, _ = served
    with pytest.raises(DeployError, match=r"version 5 of taskloom refused \(smoke: adapter 'broken': EMBEDDING holds NaN") as e:
        deploy(repo, server.http_url, adapters["broken"], adapter_name="broken")
    assert e.value.report["status"] == "refused" and e.value.report["serving"] == 4
    assert serving_version(server) == 4
    st = state(repo)
    assert st["serving"] == 4 and st["versions"]["5"]["status"] == "refused" and (repo / "taskloom" / "5").is_dir()
    assert "versions: [ 4 ]" in (repo / "taskloom" / "config.pbtxt").read_text()
    check(server, refs, "senti", key="senti2")


def test_a_failed_smoke_after_the_switch_rolls_back(served, adapters, refs):
    server, repo, _ = served
    with pytest.raises(DeployError, match="version 6 of taskloom failed .*; rolled back to version 4"):
        deploy(repo, server.http_url, adapters["broken"], adapter_name="broken", canary=False)
    assert serving_version(server) == 4
    st = state(repo)
    assert st["serving"] == 4 and st["versions"]["6"]["status"] == "rolled_back"
    assert st["history"][-1]["result"] == "rolled_back"
    check(server, refs, "senti", key="senti2")


def test_rollback_verb_and_a_corrupted_old_version_that_refuses_to_load(served, refs, capsys):
    server, repo, _ = served
    assert main(["deploy", "--rollback", "--repo", str(repo), "--url", server.http_url]) == 0
    assert json.loads(capsys.readouterr().out)["serving"] == 3  # version 4 was deployed over 3
    assert serving_version(server) == 3
    check(server, refs, "qa")
    # a file of version 2 replaced on disk: its manifest no longer matches, Triton refuses to load it
    f = repo / "taskloom" / "2" / "adapters" / "senti" / "adapter_model.safetensors"
    data = f.read_bytes()
    f.unlink()  # a new file, not an edit of the one versions 2-4 share
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(UserError, match="rollback of taskloom to version 2 failed .*sha256 does not match manifest.json"):
        rollback(repo, server.http_url, to_version=2)
    assert serving_version(server) == 3 and state(repo)["serving"] == 3
    assert "versions: [ 3 ]" in (repo / "taskloom" / "config.pbtxt").read_text()
    check(server, refs, "qa")


def test_killed_server_comes_back_serving_the_deployed_version(served, refs):
    server, repo, _ = served
    os.kill(server.pid, signal.SIGKILL)
    restarter = threading.Thread(target=server.restart)
    restarter.start()
    try:  # the client retries with backoff while the server is down, then gets its answer
        with TritonClient(server.http_url, retries=8, backoff=0.5) as c:
            out = c.infer(TEXTS, adapter="qa")
    finally:
        restarter.join()
    assert (out["embedding"] * refs["qa"][0]).sum(1).min() >= 0.999
    assert serving_version(server) == 3 == state(repo)["serving"]
    assert sorted(p for p in os.listdir(repo / "taskloom") if p.isdigit()) == ["1", "2", "3", "4", "5", "6"]
    assert np.isfinite(out["embedding"]).all()
