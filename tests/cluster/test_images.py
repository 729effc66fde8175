"""The images `make images` (scripts/images.sh) builds, exercised for real with buildah (no daemon):

- the platform image runs `taskloom` as uid 1000: help, exporting a built-in task and validating it
  (Great Expectations inside the image) exit 0; its refs agree with taskloom.images;
- the Triton image starts its bundled tritonserver (python backend, numpy<2 env) on loopback over a
  model repository written on the host by taskloom's own repository builder (MiniLM), mounted into the
  container; a tritonclient request from the host gets L2-normalised 384-d embeddings equal to
  in-process ones.

`buildah run` with chroot isolation shares the host's network, so the server's loopback ports are the
host's. Skips only without buildah; a missing archive fails (run `make images`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from taskloom import images

pytestmark = pytest.mark.cluster

IMAGES_HOME = Path(os.environ.get("TASKLOOM_IMAGES_HOME") or Path.home() / ".cache" / "taskloom-images")
TEXTS = ["A quietly devastating film, beautifully acted.", "dull", "The plot goes nowhere and the jokes fall flat."]

if shutil.which("buildah") is None:
    pytest.skip("buildah is not installed (apt-get install buildah); the image tests need it", allow_module_level=True)


def buildah(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["buildah", "--root", str(IMAGES_HOME / "storage"), "--runroot", str(IMAGES_HOME / "run"),
           "--storage-driver", "vfs", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def archive_config_id(archive: Path) -> str:
    """The image ID (config digest) recorded in a docker-archive's manifest.json."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    return "sha256:" + Path(manifest[0]["Config"]).name.removesuffix(".json").removeprefix("sha256:")


def image(name: str, ref: str) -> str:
    """The built image `ref`: its archive must exist; loaded into the build storage if it is not there."""
    archive = IMAGES_HOME / f"{name}.tar"
    if not archive.is_file():
        pytest.fail(f"{archive}: no image archive; run `make images` (bash scripts/images.sh) first")
    want = archive_config_id(archive)
    r = buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref, check=False)
    if r.returncode != 0 or "sha256:" + r.stdout.strip() != want:
        buildah("pull", "--signature-policy", str(IMAGES_HOME / "policy.json"), f"docker-archive:{archive}")
    return ref


@pytest.fixture
def container(request):
    """container(ref) → a working container of `ref`, removed at the end of the test."""
    made = []

    def make(ref: str) -> str:
        name = f"taskloom-test-{uuid.uuid4().hex[:10]}"
        buildah("from", "--pull-never", "--name", name, ref)
        made.append(name)
        return name

    yield make
    for name in made:
        buildah("rm", name, check=False)


def run_in(ctr: str, *cmd: str, mounts: tuple[str, ...] = (), timeout: float = 600) -> subprocess.CompletedProcess:
    args = ["run", "--isolation", "chroot"]
    for m in mounts:
        args += ["-v", m]
    return buildah(*args, ctr, "--", *cmd, timeout=timeout, check=False)


# -- platform ---------------------------------------------------------------------------------------------
def test_platform_image_config():
    ref = image("taskloom", images.PLATFORM)
    cfg = json.loads(buildah("inspect", "--type", "image", ref).stdout)["OCIv1"]["config"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["taskloom"]
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def test_platform_runs_taskloom_as_uid_1000(container):
    ctr = container(image("taskloom", images.PLATFORM))
    r = run_in(ctr, "id", "-u")
    assert r.returncode == 0 and r.stdout.strip() == "1000", r.stderr
    r = run_in(ctr, "taskloom", "--help")
    assert r.returncode == 0, r.stderr
    assert "validate" in r.stdout and "train" in r.stdout
    # the image's own taskloom names the same refs as this checkout (one source: taskloom.images)
    r = run_in(ctr, "python", "-m", "taskloom.images")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["taskloom", images.ref("taskloom"), "taskloom-triton", images.ref("taskloom-triton")]
    # installed as a package, not from a source tree
    r = run_in(ctr, "python", "-c", "import taskloom, sys; print(taskloom.__file__)")
    assert "/site-packages/taskloom/" in r.stdout, r.stdout + r.stderr


def test_platform_exports_and_validates_a_task(container):
    ctr = container(image("taskloom", images.PLATFORM))
    r = run_in(ctr, "taskloom", "tasks", "export", "rt-sentiment", "--out", "/tmp/t", timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = run_in(ctr, "taskloom", "validate", "/tmp/t/task.yaml", timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    r = run_in(ctr, "stat", "-c", "%u", "/tmp/t/task.yaml")
    assert r.stdout.strip() == "1000"


# -- Triton -----------------------------------------------------------------------------------------------
def test_triton_image_config():
    ref = image("taskloom-triton", images.TRITON)
    cfg = json.loads(buildah("inspect", "--type", "image", ref).stdout)["OCIv1"]["config"]
    assert cfg["User"] == "1000:1000"
    assert cfg["Entrypoint"] == ["tritonserver"]


def _processes_with(marker: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            pass
    return [p for p in pids if p != os.getpid()]


@pytest.fixture
def minilm_repository(tmp_path):
    from taskloom.serve.repository import build_repository

    repo = build_repository("minilm", tmp_path / "repo", name="minilm")
    # the server runs as uid 1000: it reads the repository, it does not own it
    for p in [repo, *repo.rglob("*")]:
        p.chmod(p.stat().st_mode | 0o444 | (0o111 if p.is_dir() else 0))
    return repo


def test_triton_image_serves_a_taskloom_repository(container, minilm_repository, tmp_path):
    import tritonclient.http as httpclient

    from taskloom.models.encoder import embed_texts
    from taskloom.serve.launcher import _free_ports

    ctr = container(image("taskloom-triton", images.TRITON))
    http_port, grpc_port, metrics_port = _free_ports(3)
    prefix = f"taskloom_imgtest_{uuid.uuid4().hex[:10]}"
    log_path = tmp_path / "tritonserver.log"
    cmd = ["buildah", "--root", str(IMAGES_HOME / "storage"), "--runroot", str(IMAGES_HOME / "run"),
           "--storage-driver", "vfs", "run", "--isolation", "chroot", "-v", f"{minilm_repository}:/models:ro", ctr, "--",
           "tritonserver", "--model-repository=/models", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
           "--metrics-address=127.0.0.1", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
           f"--metrics-port={metrics_port}", "--allow-gpu-metrics=false",
           f"--backend-config=python,shm-region-prefix-name={prefix}", "--exit-timeout-secs=5"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited {proc.returncode} before it was ready:\n{log_path.read_text()[-3000:]}")
            try:
                with opener.open(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"tritonserver not ready within 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)

        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        data = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
        inp = httpclient.InferInput("TEXT", list(data.shape), "BYTES")
        inp.set_data_from_numpy(data)
        res = client.infer("minilm", [inp], outputs=[httpclient.InferRequestedOutput("EMBEDDING")])
        emb = res.as_numpy("EMBEDDING")
        client.close()
        assert emb.shape == (len(TEXTS), 384) and emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
        ref = embed_texts(TEXTS)
        assert (emb * ref).sum(1).min() >= 0.999  # the same model as in-process
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for pid in _processes_with(prefix):  # the server and its stubs, whatever group they ended in
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # this server's shared-memory regions (its own prefix: other servers' regions are left alone)
        for f in Path("/dev/shm").glob(f"{prefix}*"):
            f.unlink(missing_ok=True)
    assert not _processes_with(prefix)
