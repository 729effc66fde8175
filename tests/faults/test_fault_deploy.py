"""`taskloom deploy` to a real Triton under faults: SIGKILL at each stage, two deploys at once, disk full.

One server (explicit model control) serves one repository for the module, on a 200 MB tmpfs when
mounting one is permitted (versions hard-link the base weights, so several fit). After every fault
the server must serve the version versions.json names, and every file in the repository is whole.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from faultkit import assert_whole, can_mount_tmpfs, finish, kill9, taskloom, unmount, wait_for

from taskloom.serve.client import TritonClient
from taskloom.serve.deploy import deploy
from taskloom.serve.launcher import TritonServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from serve_helpers import make_adapter

pytestmark = pytest.mark.e2e  # tier: a real Triton server and deploy processes

TEXTS = ["A fine, funny and moving film.", "Dull and far too long."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy-faults")
    repo = root / "repo"
    tmpfs = can_mount_tmpfs(repo, "200m")  # None: mounted
    adapters = {n: make_adapter(root, n, s, ["fresh", "rotten"]) for s, n in enumerate(("senti", "other", "third", "fourth"), 1)}
    try:
        with TritonServer(repo, model_control="explicit", models=["*"], log_dir=root / "logs") as s:
            deploy(repo, s.http_url, "minilm")
            yield {"server": s, "repo": repo, "adapters": adapters, "tmpfs": tmpfs}
    finally:
        if tmpfs is None:
            unmount(repo)


def state(repo: Path) -> dict:
    return json.loads((repo / "taskloom" / "versions.json").read_text())


def config_version(repo: Path) -> int:
    m = re.search(r"versions\s*:\s*\[\s*(\d+)", (repo / "taskloom" / "config.pbtxt").read_text())
    assert m
    return int(m.group(1))


def served_version(server) -> int:
    with TritonClient(server.http_url) as c:
        ready = [m for m in c.repository_index() if m["name"] == "taskloom" and m.get("state") == "READY"]
    assert len(ready) == 1, ready
    return int(ready[0]["version"])


def assert_consistent(served) -> int:
    """The server serves what versions.json and config.pbtxt name; every repository file is whole."""
    repo, server = served["repo"], served["server"]
    s = state(repo)
    assert served_version(server) == s["serving"] == config_version(repo), (served_version(server), s["serving"])
    assert_whole(repo / "taskloom")
    return s["serving"]


def adapters_served(served) -> list[str]:
    v = state(served["repo"])["serving"]
    return state(served["repo"])["versions"][str(v)]["adapters"] or []


def run_deploy(served, *args: str):
    return taskloom("deploy", *args, "--repo", str(served["repo"]), "--url", served["server"].http_url)


def loading(server, model: str) -> bool:
    with TritonClient(server.http_url) as c:
        return any(m["name"] == model and m.get("state") == "LOADING" for m in c.repository_index())


def stage_of(served, point: str, start_version: int) -> bool:
    repo = served["repo"]
    model = repo / "taskloom"
    if point == "writing":
        return any(model.glob(".*.staging.*"))
    if point == "canary":
        return (repo / "taskloom.candidate").exists()
    if point == "loading":  # the server goes on loading the candidate after the kill; the re-run must wait for it
        return loading(served["server"], "taskloom.candidate")
    return config_version(repo) > start_version  # "switch": config.pbtxt names the new version


def test_kill_9_at_each_stage_then_a_rerun_converges(served, evidence):
    senti = served["adapters"]["senti"]
    cases = 0
    for point in ("writing", "canary", "loading", "switch"):
        start = assert_consistent(served)
        proc = run_deploy(served, str(senti))
        try:
            wait_for(lambda p=proc, k=point, v=start: stage_of(served, k, v) or p.poll() is not None,
                     f"deploy at {point}", 300)  # fmt: skip
            reached = proc.poll() is None  # killed at that stage, not after the deploy ended
        finally:
            kill9(proc)
        assert reached, f"the deploy ended before {point}"
        cases += 1
        assert_whole(served["repo"] / "taskloom")
        code, out, err = finish(run_deploy(served, str(senti)))  # the re-run heals and converges
        assert code == 0, err
        assert json.loads(out)["status"] == "serving"
        assert assert_consistent(served) == json.loads(out)["version"]
        assert "senti" in adapters_served(served)
    with TritonClient(served["server"].http_url) as c:
        assert c.infer(TEXTS, adapter="senti")["embedding"].shape == (2, 384)
    evidence("deploy", "kill -9 while writing the version, during the canary, while the candidate loads, after the switch", cases,
             "server serves the version versions.json names; re-run serves the adapter; all files whole")  # fmt: skip


def test_two_deploys_at_once_one_wins(served, evidence):
    before = assert_consistent(served)
    a = run_deploy(served, str(served["adapters"]["other"]))
    b = run_deploy(served, str(served["adapters"]["third"]))
    results = [finish(a), finish(b)]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], [r[2][-500:] for r in results]
    loser = next(r for r in results if r[0] == 2)
    assert loser[2].count("\n") == 1 and "another deploy of 'taskloom' is running" in loser[2], loser[2]
    winner = json.loads(next(r for r in results if r[0] == 0)[1])
    assert assert_consistent(served) == winner["version"] > before
    evidence("deploy", "two deploys of one model at once", 1,
             "one serves, the other exits 2 with one line; served version matches versions.json")  # fmt: skip


def test_disk_full_keeps_the_previous_version(served, evidence):
    if served["tmpfs"] is not None:
        pytest.skip(served["tmpfs"])
    import os

    repo = served["repo"]
    before = assert_consistent(served)
    st = os.statvfs(repo)
    filler = repo / ".filler"
    with open(filler, "wb") as f:  # leave a few KB: the adapter's files no longer fit
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 16 * 1024))
    try:
        code, _, err = finish(run_deploy(served, str(served["adapters"]["fourth"])))
    finally:
        filler.unlink()
    assert code == 2, err
    assert err.count("\n") == 1 and "no space left" in err and f"version {before} keeps serving" in err, err
    assert assert_consistent(served) == before
    assert not any((repo / "taskloom").glob(".*.staging.*"))
    with TritonClient(served["server"].http_url) as c:
        assert c.infer(TEXTS)["embedding"].shape == (2, 384)
    evidence("deploy", "disk full (tmpfs model repository)", 1, "exit 2, one line; previous version still served")
