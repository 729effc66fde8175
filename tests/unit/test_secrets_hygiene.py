"""Secrets never show up in what taskloom prints, logs or writes (issue 16, security).

Every credential the product handles gets a distinctive random value: the webhook HMAC secret, the
events gateway's bearer token, the KFP token, Triton's admin key, the PostgreSQL and Redis passwords
of the Feast cluster store and the AWS keys. The real processes run with them (the monitor alarming
through the real gateway, `pipeline submit` against the KFP stand-in, Triton restricted by the key
and `deploy` using it, Feast on a real PostgreSQL and Redis, `repo push` to moto's S3, `pipeline
compile`), and also with wrong ones, so the refusals are covered. Then every captured stdout and
stderr, every log file, report, JSON and HTML written, the compiled YAML and every file of the Feast
repository is searched for each secret, raw, URL-quoted, base64 (any alignment) and hex: none may
appear.

Known exception, asserted here so that it stays the only one: Triton takes its restricted-API key
only as a command-line flag, so the key is in tritonserver's /proc/PID/cmdline (README, security).
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import numpy as np
import pytest

from taskloom.errors import UserError

pytestmark = pytest.mark.e2e  # real servers and CLI processes

TESTS = Path(__file__).resolve().parents[1]


def _secret(tag: str) -> str:
    return f"{tag}-{secrets.token_hex(16)}"


WEBHOOK_SECRET = _secret("whsec")
WRONG_WEBHOOK_SECRET = _secret("whbad")
GATEWAY_TOKEN = _secret("gwtok")
WRONG_GATEWAY_TOKEN = _secret("gwbad")
KFP_TOKEN = _secret("kfptok")
WRONG_KFP_TOKEN = _secret("kfpbad")
ADMIN_KEY = _secret("adm")
WRONG_ADMIN_KEY = _secret("admbad")
PG_PASSWORD = _secret("pgpw") + ":@/"  # characters a URL must quote
WRONG_PG_PASSWORD = _secret("pgbad")
REDIS_PASSWORD = _secret("rdpw")
AWS_SECRET_KEY = _secret("awssk")
SECRETS = {
    name: value
    for name, value in globals().items()
    if name.isupper() and name.endswith(("SECRET", "TOKEN", "KEY", "PASSWORD")) and isinstance(value, str)
}
ENV_SECRETS = ("TASKLOOM_WEBHOOK_SECRET", "TASKLOOM_EVENTS_TOKEN", "TASKLOOM_TRITON_ADMIN_KEY")


def _forms(value: str) -> set[bytes]:
    """The ways a secret can be written down: raw, URL-quoted, hex, and base64 at each of the three
    alignments it can have inside a longer base64 text (standard and URL-safe alphabets)."""
    raw = value.encode()
    forms = {raw, quote(value, safe="").encode(), raw.hex().encode(), raw.hex().upper().encode()}
    for shift in range(3):
        encoded = base64.b64encode(bytes(shift) + raw)
        start = 4 if shift else 0  # the first group mixes in the prefix bytes
        whole = (len(raw) - (3 - shift) % 3) // 3 * 4  # groups holding secret bytes only
        core = encoded[start : start + whole]
        forms |= {core, core.replace(b"+", b"-").replace(b"/", b"_")}
    return forms


FORMS = {name: _forms(value) for name, value in SECRETS.items()}


def leaks(data: bytes) -> list[str]:
    return sorted(name for name, forms in FORMS.items() if any(f in data for f in forms))


MODEL_FILES = (".safetensors", ".onnx", ".bin", ".pt")  # weights: no text to search, and large


def assert_clean(texts: dict[str, str | bytes], folders: tuple[Path, ...] = ()) -> int:
    """No secret in any of `texts` (label → captured output) nor in any file under `folders`; returns
    how many files were searched (so a test can tell it searched something)."""
    found = {label: leaks(t.encode() if isinstance(t, str) else t) for label, t in texts.items()}
    searched = 0
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file() and not path.name.endswith(MODEL_FILES):
                found[str(path)] = leaks(path.read_bytes())
                searched += 1
    bad = {label: names for label, names in found.items() if names}
    assert not bad, f"secrets leaked: {bad}"
    return searched


def test_the_search_finds_every_form():
    value = SECRETS["KFP_TOKEN"]
    for prefix in (b"", b"x", b"xy"):
        assert leaks(base64.b64encode(prefix + b"Bearer " + value.encode() + b"!")) == ["KFP_TOKEN"]
    assert leaks(value.encode().hex().encode()) == ["KFP_TOKEN"]
    assert leaks(quote(PG_PASSWORD, safe="").encode()) == ["PG_PASSWORD"]
    assert leaks(b"nothing here") == []


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any credential from outside, plus `extra`."""
    env = {
        k: v for k, v in os.environ.items() if k not in ENV_SECRETS and not k.startswith(("AWS_", "TASKLOOM_FEAST_"))
    }
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return {**env, **extra}


def taskloom(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "taskloom", *args],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outputs(label: str, proc: subprocess.CompletedProcess) -> dict[str, str]:
    return {f"{label} stdout": proc.stdout, f"{label} stderr": proc.stderr}


# -- the monitor, the events gateway and the webhook behind it -------------------------------------


class Webhook:
    """Argo Events' webhook as the chart sets it up: 401 without the gateway's bearer token; keeps the bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ok = self.headers.get("Authorization") == f"Bearer {GATEWAY_TOKEN}"
                if ok:
                    webhook.bodies.append(body)
                data = b"success" if ok else b"unauthorized"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/taskloom/drift"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def gateway(forward: str, folder: Path, token: str) -> Iterator[str]:
    """`taskloom events gateway` with the secret and `token` from files beside `folder`, its stdout and
    stderr in `folder`; yields its URL."""
    folder.mkdir(parents=True)
    creds = Path(tempfile.mkdtemp(dir=folder.parent, prefix="creds-"))
    (creds / "secret").write_text(WEBHOOK_SECRET + "\n")
    (creds / "token").write_text(token + "\n")
    args = ["events", "gateway", "--port", "0", "--forward", forward, "--max-age", "60"]
    args += ["--secret-file", str(creds / "secret"), "--token-file", str(creds / "token")]
    with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "taskloom", *args], stdout=out, stderr=err, env=clean_env())
    try:
        deadline = time.monotonic() + 60
        while "gateway listening on" not in (folder / "stdout").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (folder / "stderr").read_text()
            time.sleep(0.05)
        yield (folder / "stdout").read_text().split()[3].rstrip(",")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


T0 = 1_700_000_100.0  # a multiple of the 60 s window


def test_monitor_and_gateway_keep_the_webhook_secret_and_token(tmp_path):
    from taskloom.events.cloudevent import send_event
    from taskloom.requestlog import append
    from taskloom.store.feature_store import TaskStore

    repo = tmp_path / "feature_repo"
    store = TaskStore(repo)
    store.apply()
    # a reference nothing like real sentence embeddings: the first window drifts
    store.write_reference("sec", "sec-v1", np.random.default_rng(0).normal(size=(30, 384)))
    log = tmp_path / "requests.jsonl"
    append(log, "sec", [f"request number {i} about the weather in town {i % 7}" for i in range(16)], ts=T0 + 5)
    (tmp_path / "right.secret").write_text(WEBHOOK_SECRET + "\n")
    (tmp_path / "wrong.secret").write_text(WRONG_WEBHOOK_SECRET + "\n")
    fast = ["--window", "60", "--min-rows", "10", "--permutations", "50", "--consecutive", "1", "--once"]

    webhook = Webhook()
    try:
        with gateway(webhook.url, tmp_path / "gw", GATEWAY_TOKEN) as url:
            runs = {}
            for which in ("right", "wrong"):
                runs[which] = taskloom(
                    "monitor", "--log", str(log), "--feature-repo", str(repo), "--out", str(tmp_path / f"out-{which}"),
                    "--webhook", url, "--secret-file", str(tmp_path / f"{which}.secret"), *fast,
                )  # fmt: skip
                assert runs[which].returncode == 0, runs[which].stderr
            delivered = json.loads((tmp_path / "out-right" / "alarms.jsonl").read_text())["delivery"]
            refused = json.loads((tmp_path / "out-wrong" / "alarms.jsonl").read_text())["delivery"]
            assert delivered["status"] == "delivered" and len(webhook.bodies) == 1
            assert refused["status"] == "rejected" and refused["http_status"] == 401, refused
            assert "not delivered" in runs["wrong"].stderr
            # the gateway holding the wrong token: the webhook refuses it, the gateway answers 502
            with gateway(webhook.url, tmp_path / "gw-wrong-token", WRONG_GATEWAY_TOKEN) as bad_url:
                ack = send_event(bad_url, "io.taskloom.test", {"task": "sec"}, WEBHOOK_SECRET, timeout=20)
            assert ack["status"] == 502 and len(webhook.bodies) == 1, ack
    finally:
        webhook.close()

    assert "refused event" in (tmp_path / "gw" / "stderr").read_text()  # the wrong signature, in its log
    assert "could not forward" in (tmp_path / "gw-wrong-token" / "stderr").read_text()
    texts = {**outputs("monitor", runs["right"]), **outputs("monitor (wrong secret)", runs["wrong"])}
    texts |= {f"webhook body {i}": b for i, b in enumerate(webhook.bodies)}
    texts["gateway answer (wrong token)"] = json.dumps(ack)
    folders = (tmp_path / "out-right", tmp_path / "out-wrong", repo, tmp_path / "gw", tmp_path / "gw-wrong-token")
    assert assert_clean(texts, folders) >= 10


# -- Kubeflow Pipelines: submit with a token, a refused token, compile -----------------------------


def _load(path: Path, name: str) -> ModuleType:
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_kfp_token_stays_out_of_output_and_the_compiled_pipeline(tmp_path):
    standin = _load(TESTS / "cluster" / "kfp_standin.py", "kfp_standin")
    (tmp_path / "token").write_text(f"Bearer {KFP_TOKEN}\n")
    (tmp_path / "wrong").write_text(WRONG_KFP_TOKEN + "\n")
    with standin.KfpStandIn(token=KFP_TOKEN) as kfp:
        ok = taskloom(
            "pipeline", "submit", "train_merge_deploy", "--host", kfp.url, "--token-file", str(tmp_path / "token")
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["run_id"] and {c["headers"].get("Authorization") for c in kfp.calls} == {
            f"Bearer {KFP_TOKEN}"
        }
        refused = taskloom(
            "pipeline", "submit", "train_merge_deploy", "--host", kfp.url, "--token-file", str(tmp_path / "wrong")
        )
    assert (
        refused.returncode == 2 and "401 Unauthorized" in refused.stderr and str(tmp_path / "wrong") in refused.stderr
    )
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr

    # compiled with every credential the product reads from the environment set: none may end up in the YAML
    env = clean_env(
        TASKLOOM_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TASKLOOM_EVENTS_TOKEN=GATEWAY_TOKEN,
        TASKLOOM_TRITON_ADMIN_KEY=ADMIN_KEY,
        TASKLOOM_FEAST_POSTGRES_URL=f"postgresql://taskloom:{quote(PG_PASSWORD, safe='')}@db:5432/features",
        TASKLOOM_FEAST_REDIS_URL=f"redis://:{REDIS_PASSWORD}@cache:6379/0",
        AWS_ACCESS_KEY_ID="AKIATASKLOOMTEST",
        AWS_SECRET_ACCESS_KEY=AWS_SECRET_KEY,
    )
    compiled = taskloom("pipeline", "compile", "drift_retrain", "--out", str(tmp_path / "yaml" / "p.yaml"), env=env)
    assert compiled.returncode == 0, compiled.stderr
    assert (tmp_path / "yaml" / "p.yaml").stat().st_size > 1000
    texts = {**outputs("submit", ok), **outputs("submit (wrong token)", refused), **outputs("compile", compiled)}
    texts |= {f"request {i} body": json.dumps(c.get("body"), default=str) for i, c in enumerate(kfp.calls)}
    assert assert_clean(texts, (tmp_path / "yaml",)) == 1


# -- Triton restricted by the admin key, and a deploy that uses it ---------------------------------


def test_triton_admin_key_stays_out_of_logs_and_reports(tmp_path):
    from taskloom.serve.launcher import TritonServer
    from taskloom.serve.repository import build_repository

    repo = build_repository("minilm", tmp_path / "repo", max_batch_size=4)
    (tmp_path / "key").write_text(ADMIN_KEY + "\n")
    (tmp_path / "wrong").write_text(WRONG_ADMIN_KEY + "\n")
    logs = tmp_path / "logs"
    deploy = ["deploy", "minilm", "--repo", str(repo), "--engine", "torch", "--timeout", "300"]
    with TritonServer(repo, model_control="explicit", models=["*"], admin_key=ADMIN_KEY, log_dir=logs) as server:
        # the one known place: Triton takes the restricted-API key only as a flag (README, security notes)
        assert ADMIN_KEY in Path(f"/proc/{server.pid}/cmdline").read_bytes().decode(errors="replace")
        refused = taskloom(*deploy, "--url", server.http_url, "--admin-key-file", str(tmp_path / "wrong"))
        done = taskloom(*deploy, "--url", server.http_url, "--admin-key-file", str(tmp_path / "key"))
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
    assert refused.returncode == 2 and "refused" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    assert report["status"] == "serving" and report["serving"] == 2
    assert (logs / "tritonserver.log").stat().st_size > 0
    texts = {**outputs("deploy", done), **outputs("deploy (wrong key)", refused)}
    assert assert_clean(texts, (logs, repo)) >= 3


# -- Feast on PostgreSQL and Redis with passwords --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_and_redis(root: Path) -> Iterator[tuple[str, str, Path]]:
    """A PostgreSQL and a redis-server on loopback with this module's passwords (tests/store's way of
    starting them); yields (postgres URL of database `features`, redis URL, the servers' log folder)."""
    import psycopg

    store_conftest = _load(TESTS / "store" / "conftest.py", "store_servers")
    bindir, as_owner = store_conftest._postgres_bin(), store_conftest._as_owner
    pg = Path(tempfile.mkdtemp(prefix="taskloom-pg-"))
    (pg / "pwfile").write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pg, "postgres")
        shutil.chown(pg / "pwfile", "postgres")
    port, redis_port = _free_port(), _free_port()
    run = {"check": True, "capture_output": True, "text": True}
    initdb = [str(bindir / "initdb"), "-D", str(pg / "data"), "-U", "taskloom", f"--pwfile={pg / 'pwfile'}"]
    subprocess.run(as_owner([*initdb, "-A", "scram-sha-256", "-E", "UTF8", "--no-sync"]), **run)
    (pg / "pwfile").unlink()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {pg} -c fsync=off"
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(pg / "data")]
    subprocess.run(as_owner([*pg_ctl, "-o", opts, "-l", str(pg / "server.log"), "-w", "start"]), **run)
    redis_log = root / "redis.log"
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
         "--requirepass", REDIS_PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(root),
         "--logfile", str(redis_log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        server = f"postgresql://taskloom:{quote(PG_PASSWORD, safe='')}@127.0.0.1:{port}"
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute('CREATE DATABASE "features"')
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
                break
            except OSError:
                assert redis.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"{server}/features?sslmode=disable", f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0", pg
    finally:
        redis.terminate()
        redis.wait(30)
        subprocess.run(as_owner([*pg_ctl, "-m", "immediate", "stop"]), capture_output=True)
        shutil.copy(pg / "server.log", root / "postgres.log")
        shutil.rmtree(pg, ignore_errors=True)


def database_contents(postgres: str, redis_url: str) -> dict[str, bytes]:
    """What Feast keeps in the servers: every PostgreSQL table (registry, history) and every Redis key."""
    import psycopg
    import redis

    found = {}
    with psycopg.connect(postgres) as conn:
        tables = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        for (table,) in tables.fetchall():
            found[f"table {table}"] = repr(conn.execute(f'SELECT * FROM "{table}"').fetchall()).encode()
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter():
        value = client.hgetall(key) if client.type(key) == b"hash" else client.dump(key)
        found[f"redis {key!r}"] = repr(key).encode() + repr(value).encode()
    client.close()
    return found


def test_feast_cluster_store_keeps_the_database_passwords(tmp_path, capfd):
    from taskloom.store.backends import Cluster
    from taskloom.store.feature_store import TaskStore

    repo, servers = tmp_path / "feature_repo", tmp_path / "servers"
    servers.mkdir()
    errors = []
    with postgres_and_redis(servers) as (postgres, redis, _):
        store = TaskStore(repo, backend=Cluster(postgres, redis))
        store.apply()
        store.write_reference("sec", "sec-v1", np.random.default_rng(0).normal(size=(12, 8)))
        assert store.read_reference_record("sec")["adapter_id"] == "sec-v1"
        errors.append(repr(Cluster(postgres, redis)))
        stored = database_contents(postgres, redis)
        assert {"table drift_reference", "redis"} <= {k.split(" ")[0] if k.startswith("redis") else k for k in stored}
        wrong_pg = postgres.replace(quote(PG_PASSWORD, safe=""), WRONG_PG_PASSWORD)
        wrong_redis = redis.replace(REDIS_PASSWORD, WRONG_PG_PASSWORD)
        unreachable = f"postgresql://taskloom:{WRONG_PG_PASSWORD}@127.0.0.1:1/features"
        for pg_url, redis_url in ((wrong_pg, redis), (postgres, wrong_redis), (unreachable, redis)):
            with pytest.raises(UserError) as e:
                TaskStore(tmp_path / "other", backend=Cluster(pg_url, redis_url)).read_reference_record("sec")
            errors.append(str(e.value))
    assert "127.0.0.1:1" in errors[-1]
    captured = capfd.readouterr()
    texts = {f"error {i}": m for i, m in enumerate(errors)} | {"stdout": captured.out, "stderr": captured.err}
    texts |= stored
    assert assert_clean(texts, (repo, servers)) >= 1


# -- S3: a push with credentials, and an unreachable endpoint ---------------------------------------


def test_s3_credentials_stay_out_of_output(tmp_path):
    import boto3

    s3_server = _load(TESTS / "s3_server.py", "s3_server")
    folder = tmp_path / "repo" / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.txt").write_text("weights\n")
    moto = s3_server.MotoS3(tmp_path / "moto.log")
    try:
        env = clean_env(
            **{**moto.env, "AWS_ACCESS_KEY_ID": "AKIATASKLOOMTEST", "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY}
        )
        boto3.client(
            "s3", endpoint_url=moto.endpoint, region_name="us-east-1",
            aws_access_key_id="AKIATASKLOOMTEST", aws_secret_access_key=AWS_SECRET_KEY,
        ).create_bucket(Bucket="models")  # fmt: skip
        pushed = taskloom("repo", "push", str(tmp_path / "repo"), "s3://models/prod", env=env)
        assert pushed.returncode == 0, pushed.stderr
        dead = taskloom(
            "repo",
            "push",
            str(tmp_path / "repo"),
            "s3://models/prod",
            env={**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:1"},
        )
    finally:
        moto.stop()
    assert dead.returncode == 2 and "cannot reach" in dead.stderr, dead.stderr
    texts = {**outputs("push", pushed), **outputs("push (unreachable)", dead)}
    assert assert_clean(texts, (tmp_path,)) >= 2


# -- credentials typed where they do not belong, and malformed ones: refused without echoing them ----


def test_refusals_never_echo_a_credential(tmp_path, monkeypatch, capsys):
    from taskloom.cli import main
    from taskloom.events.cloudevent import send_event
    from taskloom.events.gateway import load_token
    from taskloom.store.backends import from_env

    monkeypatch.delenv("TASKLOOM_TRITON_ADMIN_KEY", raising=False)
    pw = quote(PG_PASSWORD, safe="")
    (tmp_path / "bad-key").write_text(f"{ADMIN_KEY} {ADMIN_KEY}\n")  # a space: not a usable key
    (tmp_path / "bad-token").write_text(f"Bearer {KFP_TOKEN} {KFP_TOKEN}\n")
    (tmp_path / "bad-gw-token").write_text(f"{GATEWAY_TOKEN}\t{GATEWAY_TOKEN}\n")
    lines = {}
    for label, args, env in [
        ("kfp host with a password", ["pipeline", "submit", "train_merge_deploy", "--host",
                                      f"http://admin:{KFP_TOKEN}@127.0.0.1:1"], {}),
        ("kfp token malformed", ["pipeline", "submit", "train_merge_deploy", "--host", "http://127.0.0.1:1",
                                 "--token-file", str(tmp_path / "bad-token")], {}),
        ("admin key malformed", ["serve", str(tmp_path), "--admin-key-file", str(tmp_path / "bad-key")], {}),
        ("admin key env malformed", ["serve", str(tmp_path)], {"TASKLOOM_TRITON_ADMIN_KEY": f"{ADMIN_KEY}=x"}),
        ("s3 endpoint with a password", ["repo", "push", str(tmp_path), "s3://models/x"],
         {"AWS_ENDPOINT_URL": f"http://user:{AWS_SECRET_KEY}@127.0.0.1:1", "AWS_ACCESS_KEY_ID": "AKIATASKLOOMTEST",
          "AWS_SECRET_ACCESS_KEY": AWS_SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1",
          "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull}),
    ]:  # fmt: skip
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            capsys.readouterr()
            code = main(args)
            out, err = capsys.readouterr()
        assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, (label, code, out, err)
        lines[label] = out + err
    assert "http://admin:***@127.0.0.1:1" in lines["kfp host with a password"]  # still says which URL

    refusals = {
        "webhook with a password": lambda: send_event(
            f"http://hook:{WEBHOOK_SECRET}@127.0.0.1:1/drift", "t", {}, WEBHOOK_SECRET, timeout=5
        ),
        "gateway token malformed": lambda: load_token(tmp_path / "bad-gw-token"),
        "redis password with a comma": lambda: from_env(
            {"TASKLOOM_FEAST_POSTGRES_URL": f"postgresql://u:{pw}@db/f",
             "TASKLOOM_FEAST_REDIS_URL": f"redis://:{REDIS_PASSWORD},x@cache:6379/0"}
        ),
        "postgres port not a number": lambda: from_env(
            {"TASKLOOM_FEAST_POSTGRES_URL": f"postgresql://u:{pw}@db:port/f",
             "TASKLOOM_FEAST_REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache:6379/0"}
        ),
        "postgres without a database": lambda: from_env(
            {"TASKLOOM_FEAST_POSTGRES_URL": f"postgresql://u:{pw}@db:5432",
             "TASKLOOM_FEAST_REDIS_URL": f"redis://:{REDIS_PASSWORD}@cache:6379/0"}
        ),
    }  # fmt: skip
    for label, call in refusals.items():
        with pytest.raises(UserError) as e:
            call()
        lines[label] = str(e.value)
    assert_clean(lines)
