"""Run the bundled `tritonserver` (from nvidia-pytriton) on loopback, supervised.

The server runs from the serving environment (`.venv-triton`: numpy<2, torch, transformers) because the
python-backend stub needs numpy<2; the platform only talks to it over HTTP/gRPC. A backend folder is
assembled in a private workspace, readiness is awaited with a timeout (a broken stub makes Triton hang
in "loading" rather than exit), and stopping leaves no process, no shared-memory file, no workspace.

    with TritonServer(build_repository("minilm", "repo")) as server:
        print(server.http_url, server.grpc_url, server.metrics_url)   # metrics: Prometheus text
        print(server.memory())                                         # RSS of the server and its stubs
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from taskloom.environment import OFFLINE_ENV, QUIET_ENV
from taskloom.errors import UserError
from taskloom.models.registry import CATALOG
from taskloom.objectstore import is_s3, triton_url
from taskloom.packages import package_dir
from taskloom.serve.admin import admin_header, server_args
from taskloom.serve.repository import build_repository, is_repository
from taskloom.serve.requests_log import ENV_PATH as REQUEST_LOG

LOOPBACK = "127.0.0.1"
SHM_DIR = Path("/dev/shm")
ENV_VAR = "TASKLOOM_TRITON_ENV"


class ServerStartError(UserError):
    """Triton did not become ready; `.log_tail` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail


@dataclass(frozen=True)
class ServingEnv:
    """Where the serving environment's python, tritonserver and python-backend pieces live."""

    root: Path
    python_version: str  # "3.11": picks the matching python-backend stub
    libdir: Path  # LIBDIR of that python: the stub must link this libpython, not another one
    tritonserver: Path
    backend_src: Path  # libtriton_python.so + triton_python_backend_utils.py
    stub: Path
    libs: Path  # nvidia_pytriton.libs: the server's bundled shared libraries

    @property
    def bin(self) -> Path:
        return self.root / "bin"


def _candidate_envs() -> list[Path]:
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser()]
    return [Path(sys.prefix).parent / ".venv-triton", Path.cwd() / ".venv-triton"]


def find_serving_env() -> ServingEnv:
    """$TASKLOOM_TRITON_ENV, else .venv-triton beside the platform venv or in the current folder."""
    tried = _candidate_envs()
    for root in tried:
        if (root / "bin" / "python").exists():
            return _describe_env(str(root.resolve()))
    where = ", ".join(str(p) for p in tried)
    raise UserError(f"Triton serving environment not found (looked in {where}): run `make setup` or set {ENV_VAR}")


@lru_cache(maxsize=4)
def _describe_env(root: str | Path) -> ServingEnv:
    root = Path(root)
    probe = (
        "import json, sys, sysconfig; print(json.dumps({'libdir': sysconfig.get_config_var('LIBDIR'),"
        " 'purelib': sysconfig.get_path('purelib'), 'version': '%d.%d' % sys.version_info[:2]}))"
    )
    try:
        out = subprocess.run(
            [str(root / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        info = json.loads(out.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as e:
        raise UserError(f"{root}/bin/python: cannot run it ({type(e).__name__}): run `make setup`") from None
    site = Path(info["purelib"])
    base = package_dir("pytriton", f"serving environment {root}", site=site) / "tritonserver"
    env = ServingEnv(
        root=root,
        python_version=info["version"],
        libdir=Path(info["libdir"]),
        tritonserver=base / "bin" / "tritonserver",
        backend_src=base / "backends" / "python",
        stub=base / "python_backend_stubs" / info["version"] / "triton_python_backend_stub",
        libs=site / "nvidia_pytriton.libs",
    )
    for need in (env.tritonserver, env.backend_src / "libtriton_python.so", env.stub):
        if not need.exists():
            raise UserError(f"{need}: missing from the serving environment {root} (nvidia-pytriton): run `make setup`")
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _check_port(port: int, option: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            raise UserError(f"{option} {port}: already in use on {LOOPBACK}") from None


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (all bound at once, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def log_tail(path: Path | None, lines: int = 30) -> str:
    if path is None:  # not started
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def last_error(tail: str) -> str:
    """The most telling line of a Triton log: its last error (glog 'E....' line), else the last line."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    for ln in reversed(lines):
        m = re.match(r"^E\d{4} [\d:.]+ +\d+ [^\]]+\] (.*)$", ln)
        if m:
            return m.group(1).strip('"')
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln:
            return ln
    return lines[-1] if lines else "(empty log)"


class TritonServer:
    """The bundled tritonserver as a context manager: start() waits for readiness, stop() cleans up.

    model_control: "none" (serve what the repository holds) or "explicit" (load_model/unload_model via
    the client; `models` are loaded at start, "*" for all). admin_key: model control (and the repository
    index) answers only requests carrying it in the admin header (taskloom.serve.admin).
    """

    def __init__(
        self,
        repo_dir,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        log_dir=None,
        *,
        model_control: str = "none",
        models: list[str] | None = None,
        extra_args: list[str] | None = None,
        exit_timeout: int = 5,
        admin_key: str | None = None,
    ):
        if model_control not in ("none", "explicit"):
            raise UserError(f"model_control {model_control!r}: use 'none' or 'explicit'")
        # a local folder, or s3://bucket/prefix, which the bundled server reads itself (taskloom.objectstore)
        self.s3 = is_s3(repo_dir)
        self.repo_dir = Path(repo_dir).resolve() if not self.s3 else repo_dir
        self.ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.model_control = model_control
        self.models = list(models or [])
        self.extra_args = list(extra_args or [])
        self.admin_key = admin_key
        self.exit_timeout = exit_timeout  # Triton waits this long for open connections when stopping
        self.workspace: Path | None = None
        self.log_path: Path | None = None
        self.shm_prefix: str | None = None
        self.ready_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None
        self._log: BinaryIO | None = None

    # -- addresses -------------------------------------------------------------------------------
    @property
    def http_port(self) -> int | None:
        return self.ports["--http-port"]

    @property
    def grpc_port(self) -> int | None:
        return self.ports["--grpc-port"]

    @property
    def metrics_port(self) -> int | None:
        return self.ports["--metrics-port"]

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """host:port, as gRPC clients (tritonclient.grpc, grpcurl) take it."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        """The server's pid (also its process group), kept after stop() for inspection."""
        return self._pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> TritonServer:
        if not self.alive:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _check_repository(self) -> None:
        if self.s3:
            return  # Triton lists the bucket itself; a missing or unreadable one ends in its own error line
        if not self.repo_dir.is_dir():
            raise UserError(f"{self.repo_dir}: no such model repository folder")
        if self.model_control == "none" and not any(self.repo_dir.glob("*/config.pbtxt")):
            raise UserError(f"{self.repo_dir}: not a Triton model repository (no <model>/config.pbtxt)")

    def command(self, env: ServingEnv) -> list[str]:
        assert self.workspace is not None, "start() creates the workspace first"
        cmd = [
            str(env.tritonserver),
            f"--model-repository={triton_url(str(self.repo_dir)) if self.s3 else self.repo_dir}",
            f"--backend-directory={self.workspace / 'backends'}",
            f"--http-address={LOOPBACK}",
            f"--grpc-address={LOOPBACK}",
            f"--metrics-address={LOOPBACK}",
            *[f"{opt}={port}" for opt, port in self.ports.items()],
            "--allow-gpu-metrics=false",
            f"--model-control-mode={self.model_control}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--exit-timeout-secs={self.exit_timeout}",
            "--log-verbose=0",
        ]
        if self.model_control == "explicit":
            cmd += [f"--load-model={m}" for m in self.models]
        if self.admin_key:
            cmd += server_args(self.admin_key)
        return cmd + self.extra_args

    def environment(self, env: ServingEnv) -> dict[str, str]:
        """LIBDIR of the serving python first (else the stub links a bundled libpython of another
        version), the serving venv's bin first on PATH (the stub finds site-packages from `python3`)."""
        e = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
        e.update(OFFLINE_ENV | QUIET_ENV)
        # idle OpenMP threads sleep instead of spinning: on shared or busy CPUs spinning torch threads made
        # a MiniLM forward 5-20x slower (measured: 0.11-0.48 s spinning vs 0.011-0.023 s passive)
        e.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if e.get(REQUEST_LOG):  # the server runs in its own workspace: a relative log path means the caller's
            e[REQUEST_LOG] = str(Path(e[REQUEST_LOG]).resolve())
        e["LD_LIBRARY_PATH"] = os.pathsep.join(
            [str(env.libdir), str(env.libs)]
            + ([os.environ["LD_LIBRARY_PATH"]] if os.environ.get("LD_LIBRARY_PATH") else [])
        )
        e["PATH"] = os.pathsep.join([str(env.bin), os.environ.get("PATH", "/usr/bin:/bin")])
        e["VIRTUAL_ENV"] = str(env.root)
        return e

    def start(self, timeout: float = 120) -> TritonServer:
        """Launch and wait until /v2/health/ready; on timeout or early exit: kill, clean, raise."""
        if self.alive:
            return self
        self._check_repository()
        env = find_serving_env()
        for opt, port in self.ports.items():
            if port:
                _check_port(port, opt)
        missing = [opt for opt, port in self.ports.items() if not port]
        for opt, port in zip(missing, _free_ports(len(missing))):
            self.ports[opt] = port
        self.workspace = Path(tempfile.mkdtemp(prefix="taskloom-triton-"))
        self.shm_prefix = f"taskloom_{uuid.uuid4().hex[:12]}"
        atexit.register(self.stop)
        try:
            backend = self.workspace / "backends" / "python"
            backend.mkdir(parents=True)
            for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
                os.symlink(env.backend_src / f, backend / f)
            os.symlink(env.stub, backend / "triton_python_backend_stub")
            log_dir = self.log_dir or self.workspace / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / "tritonserver.log"
            self._log = open(self.log_path, "ab")  # noqa: SIM115 (the server's log, open while it runs; closed in stop())
            t0 = time.monotonic()
            in_main = threading.current_thread() is threading.main_thread()
            self._proc = subprocess.Popen(
                self.command(env),
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(env),
                cwd=self.workspace,
                start_new_session=True,
                preexec_fn=_die_with_parent if in_main else None,
            )
            self._pid = self._proc.pid
            self._wait_ready(timeout, t0)
        except BaseException:
            self.stop(grace=3)
            raise
        self.ready_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, timeout: float, t0: float) -> None:
        url = f"{self.http_url}/v2/health/ready"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        while True:
            assert self._proc is not None, "start() launches the process first"
            rc = self._proc.poll()
            if rc is not None:
                tail = log_tail(self.log_path)
                raise ServerStartError(
                    f"Triton exited with code {rc} before it was ready: {last_error(tail)} "
                    f"(repository {self.repo_dir})",
                    tail,
                )
            try:
                with opener.open(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - t0 > timeout:
                tail = log_tail(self.log_path)
                raise ServerStartError(
                    f"Triton was not ready within {timeout:g} s: {last_error(tail)} (repository {self.repo_dir})", tail
                )
            time.sleep(0.1)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM (Triton unloads models, stubs exit), SIGKILL the whole process group after `grace`
        seconds (default: Triton's exit timeout + 5), then remove this server's shared-memory regions
        and its workspace. Idempotent."""
        atexit.unregister(self.stop)
        grace = self.exit_timeout + 5 if grace is None else grace
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _kill_group(proc.pid)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.shm_prefix:
            for f in SHM_DIR.glob(f"{self.shm_prefix}*"):
                f.unlink(missing_ok=True)
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def memory(self, field: str = "Rss") -> dict:
        """Memory in bytes (`field` Rss or Pss) of the server process and of its python-backend stubs
        (one process per model instance)."""
        if self._pid is None:
            return {"server": 0, "stubs": {}, "total": 0}
        stubs = {
            pid: process_rss(pid, field)
            for pid in group_members(self._pid)
            if pid != self._pid and "triton_python_backend_stub" in _cmdline(pid)
        }
        server = process_rss(self._pid, field)
        return {"server": server, "stubs": stubs, "total": server + sum(stubs.values())}

    def restart(self, timeout: float = 120) -> TritonServer:
        """Stop and start again on the same ports (used when the server died)."""
        self.stop(grace=3)
        return self.start(timeout)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies, even by SIGKILL
    (Linux prctl PR_SET_PDEATHSIG; tied to the starting thread, so only used from the main thread)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is `pgid` (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def process_rss(pid: int, field: str = "Rss") -> int:
    """Memory of one process in bytes (Linux /proc/PID/smaps_rollup; 0 when it is gone). field "Rss":
    resident pages; "Pss": the same with each shared page split between the processes sharing it."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_group(pgid: int, wait: float = 5.0) -> None:
    """SIGKILL what is left of the server's group (stubs can outlive a killed server) until none is."""
    deadline = time.monotonic() + wait
    while group_members(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def serve_foreground(
    path,
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    *,
    head: str | None = None,
    log_dir=None,
    timeout: float = 180,
    restarts: int = 3,
    admin_key: str | None = None,
) -> int:
    """`taskloom serve`: a repository (folder with */config.pbtxt) or a model folder (exported to a
    repository in a temp workspace first); prints the URLs; Ctrl-C or SIGTERM stop it cleanly. With
    `admin_key`, model control answers only requests carrying it (taskloom.serve.admin)."""
    if is_s3(path):
        return _serve(str(path), None, http_port, grpc_port, metrics_port, log_dir, timeout, restarts, admin_key)
    path = Path(path)
    is_repo = is_repository(path)
    is_model = not is_repo and ((path / "config.json").exists() or (str(path) in CATALOG and not path.exists()))
    if not (is_repo or is_model):
        if not path.exists():
            raise UserError(f"{path}: no such model repository or model folder")
        raise UserError(
            f"{path}: neither a Triton model repository (<model>/config.pbtxt) nor a model folder (config.json)"
        )
    find_serving_env()  # fail before exporting anything when the serving environment is missing
    built = None
    repo = path
    if is_model:
        built = Path(tempfile.mkdtemp(prefix="taskloom-repo-"))
        try:
            repo = build_repository(path if path.exists() else str(path), built / "repo", head_task=head)
        except BaseException:
            shutil.rmtree(built, ignore_errors=True)
            raise

    return _serve(repo, built, http_port, grpc_port, metrics_port, log_dir, timeout, restarts, admin_key)


def _serve(repo, built, http_port, grpc_port, metrics_port, log_dir, timeout, restarts, admin_key) -> int:
    """Run the server on `repo` (a folder or s3://) until Ctrl-C or SIGTERM; `built` is removed after."""
    # explicit model control with every model loaded at start: `taskloom deploy` can then publish new
    # versions into `repo` and switch them without a restart (and a restart serves what config.pbtxt names)
    server = TritonServer(
        repo,
        http_port or None,
        grpc_port or None,
        metrics_port or None,
        log_dir=log_dir,
        model_control="explicit",
        models=["*"],
        admin_key=admin_key,
    )
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum, frame):
        raise KeyboardInterrupt

    if main_thread:  # SIGTERM stops as cleanly as Ctrl-C
        signal.signal(signal.SIGTERM, _on_term)
    try:
        server.start(timeout)
        models = ["the models in it"] if server.s3 else sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
        print(f"Triton ready in {server.ready_seconds:.1f} s, serving {', '.join(models)} from {repo}", flush=True)
        print(f"  http     {server.http_url}", flush=True)
        print(f"  grpc     {server.grpc_url}", flush=True)
        print(f"  metrics  {server.metrics_url}", flush=True)
        print(f"  log      {server.log_path}", flush=True)
        if admin_key:
            print(f"  control  restricted: load/unload/index need the header {admin_header()}", flush=True)
        print(f"  repo     {repo} (taskloom deploy ... --repo {repo} --url {server.http_url})", flush=True)
        print("Ctrl-C stops the server.", flush=True)
        left = restarts
        while True:
            time.sleep(0.5)
            if server.alive:
                continue
            tail = log_tail(server.log_path)
            if left <= 0:
                print(f"error: Triton exited: {last_error(tail)}", file=sys.stderr, flush=True)
                return 1
            left -= 1
            print(
                f"Triton exited ({last_error(tail)}); restarting ({restarts - left}/{restarts})",
                file=sys.stderr,
                flush=True,
            )
            server.restart(timeout)
            print(f"Triton ready again at {server.http_url}", flush=True)
    except KeyboardInterrupt:
        print("stopping Triton", flush=True)
        return 0
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        server.stop()
        if built is not None:
            shutil.rmtree(built, ignore_errors=True)
