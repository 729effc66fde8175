"""The real bundled tritonserver serving real MiniLM: HTTP and gRPC, heads, errors, clean shutdown.

One server (two models: plain MiniLM and MiniLM + a random 2-label head) is shared by the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import TEXTS, make_head_model, reference_head

from taskloom.cli import main
from taskloom.errors import UserError
from taskloom.models.encoder import embed_texts
from taskloom.serve.client import TritonClient, measure_latency
from taskloom.serve.launcher import SHM_DIR, ServerStartError, TritonServer, free_port, group_members
from taskloom.serve.repository import build_repository

pytestmark = pytest.mark.e2e  # tier: a real Triton server


def leftovers(server_pid: int, shm_prefix: str, workspace: Path) -> list[str]:
    """Anything a stopped server left behind: live processes of its group, shm regions, workspace."""
    found = [f"pid {p}" for p in group_members(server_pid)]
    found += [str(f) for f in SHM_DIR.glob(f"{shm_prefix}*")]
    return found + ([str(workspace)] if workspace.exists() else [])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    head_model = make_head_model(root)
    repo = build_repository("minilm", root / "repo", name="minilm")
    build_repository(head_model, repo, name="toy", head_task="toy", max_batch_size=8)
    return repo, head_model


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    with TritonServer(models[0], log_dir=tmp_path_factory.mktemp("logs")) as s:
        yield s


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_embeddings_equal_in_process(server, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonClient(url, model="minilm", protocol=protocol) as c:
        out = c.infer(TEXTS)
        assert out["label"] is None and out["probs"] is None
        single = c.infer(TEXTS[2])["embedding"]
    ref = embed_texts(TEXTS)
    assert out["embedding"].shape == (5, 384) and out["embedding"].dtype == np.float32
    assert (out["embedding"] * ref).sum(1).min() >= 0.999
    assert float(single[0] @ ref[2]) >= 0.999


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_head_outputs_equal_in_process(server, models, protocol):
    url = server.http_url if protocol == "http" else server.grpc_url
    with TritonClient(url, model="toy", protocol=protocol) as c:
        out = c.infer(TEXTS)
    labels, probs = reference_head(models[1], TEXTS)
    assert out["label"] == labels
    np.testing.assert_allclose(out["probs"], probs, atol=1e-4)
    assert (out["embedding"] * embed_texts(TEXTS)).sum(1).min() >= 0.999


def test_concurrent_requests_are_batched_and_each_answered_right(server):
    ref = embed_texts(TEXTS)
    errors, cos = [], []

    def worker(k):
        try:
            with TritonClient(server.grpc_url, model="minilm", protocol="grpc") as c:
                for i in range(6):
                    j = (i + k) % len(TEXTS)
                    cos.append(float(c.infer([TEXTS[j]])["embedding"][0] @ ref[j]))
        except Exception as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cos) == 24 and min(cos) >= 0.999


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server):
    with TritonClient(server.http_url, model="toy") as c:
        with pytest.raises(UserError, match="TEXT row 0: empty text"):
            c.infer([""])
        with pytest.raises(UserError, match="batch-size must be <= 8"):
            c.infer(["x"] * 9)
        with pytest.raises(UserError, match="expected a non-empty list"):
            c.infer([])
        assert c.infer(["still here"])["embedding"].shape == (1, 384)
    with TritonClient(server.http_url, model="nope") as c, pytest.raises(UserError, match="nope"):
        c.infer(["x"])


def test_measure_latency_reports_percentiles(server):
    with TritonClient(server.grpc_url, model="minilm", protocol="grpc") as c:
        lat = measure_latency(c, TEXTS * 2)
    assert lat["n"] == 10 and 0 < lat["p50_ms"] <= lat["p99_ms"]


def test_served_texts_land_in_the_request_log_the_monitor_reads(server, tmp_path):
    from taskloom.requestlog import LogReader

    log = tmp_path / "requests.jsonl"
    with TritonClient(server.grpc_url, model="minilm", protocol="grpc", request_log=log, task="rt-sentiment") as c:
        c.infer(TEXTS[:3])
        c.infer(TEXTS[3])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:4]
    assert {r["task"] for r in rows} == {"rt-sentiment"}
    assert len(LogReader(log).poll(final=True)) == 4


def test_unreachable_server_is_one_clear_error():
    port = free_port()
    with TritonClient(f"127.0.0.1:{port}", protocol="grpc", timeout=2, retries=1, backoff=0.01) as c:
        with pytest.raises(UserError, match=f"127.0.0.1:{port}"):
            c.infer(["x"])
        assert not c.is_server_ready()


def test_explicit_mode_loads_and_unloads_then_stops_clean(models):
    server = TritonServer(models[0], model_control="explicit")
    server.start(timeout=120)
    pid, prefix, workspace = server.pid, server.shm_prefix, server.workspace
    try:
        with TritonClient(server.http_url, model="minilm") as c:
            assert c.is_server_ready() and not c.is_model_ready()
            assert {m["name"] for m in c.repository_index()} == {"minilm", "toy"}
            c.load_model()
            assert c.is_model_ready()
            assert float(c.infer(TEXTS[:1])["embedding"][0] @ embed_texts(TEXTS[:1])[0]) >= 0.999
            assert any(SHM_DIR.glob(f"{prefix}*"))
            c.unload_model()
            deadline = time.monotonic() + 30
            while c.is_model_ready() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not c.is_model_ready()
    finally:
        server.stop()
    assert leftovers(pid, prefix, workspace) == []
    assert not server.alive


def test_readiness_timeout_is_honoured_and_leaves_nothing(tmp_path):
    repo = tmp_path / "repo"
    (repo / "hang" / "1").mkdir(parents=True)
    (repo / "hang" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 0\n'
        'input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
        'output [ { name: "Y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    )
    (repo / "hang" / "1" / "model.py").write_text(
        "import time\n\nclass TritonPythonModel:\n    def initialize(self, args):\n        time.sleep(600)\n"
    )
    server = TritonServer(repo)
    t0 = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready within 4 s") as e:
        server.start(timeout=4)
    assert time.monotonic() - t0 < 4 + 10
    assert "\n" not in str(e.value) and "hang" in e.value.log_tail
    assert server.pid and server.workspace is None
    assert group_members(server.pid) == [] and not any(SHM_DIR.glob(f"{server.shm_prefix}*"))


def test_a_model_that_fails_to_load_is_reported(tmp_path):
    repo = tmp_path / "repo"
    build_repository("minilm", repo, name="broken")
    (repo / "broken" / "1" / "weights" / "model.safetensors").write_bytes(b"not weights")
    server = TritonServer(repo)
    with pytest.raises(ServerStartError, match="sha256 does not match|exited with code"):
        server.start(timeout=60)
    assert not server.alive and server.workspace is None


def test_missing_serving_env_is_one_clear_error(models, monkeypatch):
    monkeypatch.setenv("TASKLOOM_TRITON_ENV", "/no/such/venv")
    with pytest.raises(UserError, match="make setup"):
        TritonServer(models[0]).start()


def test_cli_serve_missing_path_exits_2_with_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing" in err and "\n" not in err


def test_cli_serve_runs_restarts_and_stops_on_sigterm(models, tmp_path):
    """`taskloom serve REPO` in the foreground: URLs printed, requests answered, a killed server is
    restarted, SIGTERM exits 0 leaving no process, no shm file and the log in --log-dir."""
    http = free_port()
    cmd = [sys.executable, "-m", "taskloom.cli", "serve", str(models[0]), "--http-port", str(http),
           "--grpc-port", str(free_port()), "--metrics-port", str(free_port()), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []

    def read_until(marker, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if marker in line:
                return
        raise AssertionError(f"no {marker!r} in output: {lines} / {proc.stderr.read() if proc.poll() is not None else ''}")

    try:
        read_until("Ctrl-C")
        assert any(f"http     http://127.0.0.1:{http}" in ln for ln in lines)
        with TritonClient(f"127.0.0.1:{http}", model="toy") as c:
            assert c.infer(["good"])["label"][0] in ("fresh", "rotten")
        triton = tritonservers(f"--http-port={http}")
        assert len(triton) == 1
        os.kill(triton[0], signal.SIGKILL)
        read_until("ready again")
        with TritonClient(f"127.0.0.1:{http}", model="minilm", retries=3) as c:
            assert c.infer(["back"])["embedding"].shape == (1, 384)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert tritonservers(f"--http-port={http}") == []
    assert (tmp_path / "logs" / "tritonserver.log").stat().st_size > 0


def tritonservers(needle: str) -> list[int]:
    """tritonserver processes whose command line holds `needle`."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "tritonserver" in text and needle in text:
            pids.append(int(cmdline.parent.name))
    return pids
