"""The ModelDeployment operator (`taskloom operator`) against the real API server of the cluster tier.

There is no kubelet, so the harness plays it (PodRunner): for each pod of a ModelDeployment that the
scheduler binds, it starts a real Triton from the pod's own start command (model repository, model,
HTTP port) on the pod's own loopback address 127.0.0.N, and patches the pod's status (Running, Ready,
podIP) so the endpoint slice controller lists it; a pod being deleted has its Triton stopped and is then
removed. The operator runs as a subprocess, as a developer runs it, and talks to each pod's address.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from cluster_env import REPO, Cluster

from taskloom.artifacts import sha256_file
from taskloom.operator.crd import REVISION, revision, shipped
from taskloom.serve.client import TritonClient
from taskloom.serve.launcher import TritonServer, free_port
from taskloom.serve.repository import build_repository, version_numbers

sys.path.insert(0, str(REPO / "tests" / "serving"))
from serve_helpers import make_adapter

pytestmark = pytest.mark.cluster

NS = "serving"
NAME = "rt"
MODEL = "taskloom"
CRD = REPO / "charts" / "taskloom" / "crds" / "modeldeployments.taskloom.dev.yaml"
LABEL = "taskloom.dev/modeldeployment"
OLD_CRD = REPO / "tests" / "data" / "crds" / "modeldeployments.taskloom.dev-rev1.yaml"


class PodTriton(TritonServer):
    """A Triton whose HTTP endpoint listens on the pod's address (gRPC and metrics stay on 127.0.0.1)."""

    def __init__(self, *args, address: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.address = address

    @property
    def http_url(self) -> str:
        return f"http://{self.address}:{self.http_port}"

    def command(self, env) -> list[str]:
        return [*super().command(env), f"--http-address={self.address}"]


def _arg(args: list[str], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(flag + "="))


class PodRunner:
    """Plays the kubelet for the ModelDeployment pods of one namespace (a thread polling the API)."""

    def __init__(self, cluster: Cluster, log_dir: Path):
        self.core = __import__("kubernetes").client.CoreV1Api(cluster.api())
        self.log_dir = log_dir
        self.servers: dict[str, PodTriton] = {}
        self.addresses: dict[str, str] = {}
        self.next_ip = 2
        self.errors: list[str] = []
        self.started: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=30)
        for s in self.servers.values():
            s.stop()

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as e:  # keep playing the kubelet; the tests' waits report what is missing
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(0.3)

    def step(self):
        from kubernetes.client import V1DeleteOptions

        pods = self.core.list_namespaced_pod(NS, label_selector=LABEL).items
        names = {p.metadata.name for p in pods}
        for gone in [n for n in self.servers if n not in names]:
            self.servers.pop(gone).stop()
        for pod in pods:
            name = pod.metadata.name
            if pod.metadata.deletion_timestamp is not None:
                if name in self.servers:
                    self.servers.pop(name).stop()
                self.core.delete_namespaced_pod(name, NS, body=V1DeleteOptions(grace_period_seconds=0))
                continue
            if name in self.servers or not pod.spec.node_name:
                continue
            self.start(pod)

    def start(self, pod):
        name = pod.metadata.name
        args = pod.spec.containers[0].args
        address = self.addresses.setdefault(name, f"127.0.0.{self.next_ip}")
        if address == f"127.0.0.{self.next_ip}":
            self.next_ip += 1
        server = PodTriton(
            _arg(args, "--model-repository"),
            http_port=int(_arg(args, "--http-port")),
            model_control="explicit",
            models=[_arg(args, "--load-model")],
            log_dir=self.log_dir / name,
            address=address,
        )
        server.start()
        self.servers[name] = server
        self.started.append(name)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        conds = [
            {"type": t, "status": "True", "lastTransitionTime": now}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        status = {
            "phase": "Running",
            "podIP": address,
            "podIPs": [{"ip": address}],
            "hostIP": "10.0.0.1",
            "startTime": now,
            "conditions": conds,
        }
        self.core.patch_namespaced_pod_status(name, NS, {"status": status})

    def crash(self, pod: str):
        """The pod's Triton dies; the pod stays (its status untouched), as after an OOM kill before a restart."""
        self.servers[pod].stop()


class Operator:
    """`taskloom operator --namespace NS` as a subprocess (stoppable: a restart mid-change)."""

    def __init__(self, cluster: Cluster, http_port: int, log: Path):
        self.cluster, self.http_port, self.log = cluster, http_port, log
        self.proc: subprocess.Popen | None = None

    def start(self):
        env = self.cluster.env(TASKLOOM_OPERATOR_HTTP_PORT=str(self.http_port), TASKLOOM_OPERATOR_INTERVAL="1")
        env.pop("TASKLOOM_TRITON_ADMIN_KEY", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(REPO / ".venv" / "bin" / "taskloom"), "operator", "--namespace", NS],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        return self

    def stop(self, kill: bool = False):
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(timeout=30)

    def tail(self, n: int = 40) -> str:
        if not self.log.exists():
            return ""
        lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if "succeeded." not in ln]
        return "\n".join(lines[-n:])


def broken_adapter(source: Path, dest: Path) -> Path:
    """A copy of `source` whose LoRA B weights are NaN: it passes every file check, its smoke fails."""
    import shutil

    from safetensors.torch import load_file, save_file

    from taskloom.artifacts import write_digest

    shutil.copytree(source, dest)
    f = dest / "adapter_model.safetensors"
    save_file({k: v * float("nan") if "lora_B" in k else v for k, v in load_file(f).items()}, str(f))
    write_digest(f)
    return dest


@pytest.fixture(scope="module")
def world(cluster, tmp_path_factory):
    """The CRD, a namespace, a model repository (MiniLM as version 1), two adapters, the kubelet stand-in."""
    root = tmp_path_factory.mktemp("operator")
    cluster.kubectl("apply", "-f", str(CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.taskloom.dev")
    cluster.kubectl("create", "namespace", NS, check=False)
    repo = build_repository("minilm", root / "repo")
    adapters = {
        n: make_adapter(root / "adapters", n, seed, ["fresh", "rotten"] if n == "senti" else None)
        for n, seed in (("senti", 1), ("qa", 2))
    }
    adapters["broken"] = broken_adapter(adapters["qa"], root / "adapters" / "broken")
    port = free_port()
    with PodRunner(cluster, root / "pods") as pods:
        yield {"root": root, "repo": repo, "adapters": adapters, "port": port, "pods": pods}


@pytest.fixture(scope="module")
def operator(cluster, world):
    op = Operator(cluster, world["port"], world["root"] / "operator.log").start()
    world["operator"] = op
    yield op
    op.stop()


def declared(world, *names: str, sha: dict | None = None) -> list[dict]:
    out = []
    for n in names:
        path = world["adapters"][n]
        digest = (sha or {}).get(n) or sha256_file(path / "adapter_model.safetensors")
        out.append({"name": n, "path": str(path), "sha256": digest})
    return out


def md(world, adapters: list[dict] | None = None, replicas: int = 1, canary: bool = True) -> dict:
    return {
        "apiVersion": "taskloom.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "model": {"name": MODEL, "repository": str(world["repo"])},
            "adapters": adapters or [],
            "replicas": replicas,
            "rollout": {"canary": canary, "rollbackOnFailure": True},
        },
    }


def get_md(cluster) -> dict:
    return cluster.get("modeldeployment", NAME, "-n", NS)


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == kind), {})


def wait_ready(cluster, world, what: str, timeout: float = 240, **expect) -> dict:
    """Ready=True for the current generation, with `expect` fields of the status (liveVersion=..)."""

    def check():
        obj = get_md(cluster)
        st = obj.get("status") or {}
        ready = condition(obj, "Ready")
        ok = (
            ready.get("status") == "True"
            and st.get("observedGeneration") == obj["metadata"]["generation"]
            and all(st.get(k) == v for k, v in expect.items())
        )
        return obj if ok else None

    try:
        return cluster.wait(what, check, timeout=timeout, every=1)
    except AssertionError as e:
        raise AssertionError(
            f"{e}\nstatus: {json.dumps(get_md(cluster).get('status'), indent=1)}\n"
            f"operator log:\n{world['operator'].tail()}\nkubelet: {world['pods'].errors[-5:]}"
        ) from None


def pod_versions(world) -> dict[str, int | None]:
    """What each running pod's Triton serves, asked directly."""
    out = {}
    for pod, server in world["pods"].servers.items():
        with TritonClient(server.http_url, model=MODEL) as c:
            ready = [
                int(m["version"]) for m in c.repository_index() if m["name"] == MODEL and m.get("state") == "READY"
            ]
        out[pod] = ready[0] if ready else None
    return out


def events(cluster, reason: str) -> list[dict]:
    items = cluster.get("events", "-n", NS)["items"]
    return [e for e in items if e.get("reason") == reason and e["involvedObject"].get("name") == NAME]


@pytest.fixture(scope="module")
def created(cluster, world, operator):
    """The ModelDeployment with no adapters, Ready."""
    cluster.apply(md(world))
    return wait_ready(cluster, world, "the ModelDeployment Ready", liveVersion="1")


def test_create_ready_with_the_declared_version(cluster, world, created):
    st = created["status"]
    assert st["readyReplicas"] == 1 and st["adaptersLoaded"] == []
    assert condition(created, "Degraded")["status"] == "False"
    dep = cluster.get("deployment", NAME, "-n", NS)
    assert dep["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert dep["spec"]["template"]["metadata"]["annotations"]["taskloom.dev/model-version"] == "1"
    assert "--load-model=taskloom" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert cluster.get("service", NAME, "-n", NS)["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert cluster.kubectl("get", "pdb", NAME, "-n", NS, check=False).returncode != 0  # one replica: no PDB
    assert set(pod_versions(world).values()) == {1}
    assert "taskloom.dev/operator" in created["metadata"]["finalizers"]
    printed = cluster.kubectl("get", "modeldeployments", "-n", NS).stdout
    assert "taskloom" in printed and "True" in printed


def test_add_then_remove_an_adapter(cluster, world, created):
    cluster.apply(md(world, declared(world, "senti")))
    obj = wait_ready(cluster, world, "the adapter served", adaptersLoaded=["senti"])
    version = int(obj["status"]["liveVersion"])
    assert version > 1 and set(pod_versions(world).values()) == {version}
    pod = next(iter(world["pods"].servers.values()))
    with TritonClient(pod.http_url, model=MODEL) as c:
        assert set(c.infer(["A fine film."], adapter="senti")["label"]) <= {"fresh", "rotten"}
    assert events(cluster, "Loaded")
    cluster.apply(md(world))
    wait_ready(cluster, world, "the adapter removed", adaptersLoaded=[], liveVersion="1")
    assert set(pod_versions(world).values()) == {1}


def test_corrupt_sha256_is_degraded_and_nothing_loaded(cluster, world, created):
    cluster.apply(md(world))
    wait_ready(cluster, world, "the base", liveVersion="1")
    versions = version_numbers(world["repo"] / MODEL)
    cluster.apply(md(world, declared(world, "qa", sha={"qa": "0" * 64})))

    def degraded():
        obj = get_md(cluster)
        c = condition(obj, "Degraded")
        return (
            obj if c.get("status") == "True" and c.get("observedGeneration") == obj["metadata"]["generation"] else None
        )

    obj = cluster.wait("Degraded", degraded, timeout=60)
    assert condition(obj, "Degraded")["reason"] == "AdapterDigestMismatch"
    assert condition(obj, "Ready")["status"] == "False"
    assert obj["status"]["liveVersion"] == "1" and obj["status"]["adaptersLoaded"] == []
    assert version_numbers(world["repo"] / MODEL) == versions  # nothing written
    assert set(pod_versions(world).values()) == {1}
    assert events(cluster, "DegradedTrue")
    cluster.apply(md(world))
    wait_ready(cluster, world, "back to the base", liveVersion="1")


def test_model_unloaded_by_hand_is_loaded_again(cluster, world, created):
    cluster.apply(md(world, declared(world, "senti")))
    obj = wait_ready(cluster, world, "the adapter served", adaptersLoaded=["senti"])
    pod, server = next(iter(world["pods"].servers.items()))
    with TritonClient(server.http_url, model=MODEL) as c:
        c.unload_model(MODEL)
    try:
        cluster.wait(
            "the model loaded again", lambda: pod_versions(world).get(pod) == int(obj["status"]["liveVersion"]), timeout=60
        )
    except AssertionError as e:
        raise AssertionError(f"{e}\n{world['operator'].tail()}") from None
    wait_ready(cluster, world, "Ready again", adaptersLoaded=["senti"])


def test_deleted_service_comes_back(cluster, world, created):
    uid = cluster.get("service", NAME, "-n", NS)["metadata"]["uid"]
    cluster.kubectl("delete", "service", NAME, "-n", NS)

    def back():
        out = cluster.kubectl("get", "service", NAME, "-n", NS, "-o", "json", check=False)
        return out.returncode == 0 and json.loads(out.stdout)["metadata"]["uid"] != uid

    cluster.wait("the Service recreated", back, timeout=60)


def test_scale_to_two_replicas_both_converge_and_a_pdb_appears(cluster, world, created):
    spec = md(world, declared(world, "senti"), replicas=2)
    cluster.apply(spec)
    obj = wait_ready(cluster, world, "two replicas Ready", timeout=300, readyReplicas=2, adaptersLoaded=["senti"])
    live = int(obj["status"]["liveVersion"])
    versions = pod_versions(world)
    assert len(versions) == 2 and set(versions.values()) == {live}
    pdb = cluster.get("pdb", NAME, "-n", NS)
    assert pdb["metadata"]["ownerReferences"][0]["name"] == NAME and pdb["spec"]["maxUnavailable"] == 1
    cluster.apply(md(world, declared(world, "senti"), replicas=1))
    wait_ready(cluster, world, "back to one replica", timeout=180, readyReplicas=1)
    cluster.wait(
        "the PDB deleted",
        lambda: cluster.kubectl("get", "pdb", NAME, "-n", NS, check=False).returncode != 0,
        timeout=60,
    )


def test_operator_restarted_mid_change_reaches_the_same_end_state(cluster, world, created):
    op = world["operator"]
    cluster.apply(md(world, declared(world, "senti")))
    wait_ready(cluster, world, "senti served", adaptersLoaded=["senti"])
    before = version_numbers(world["repo"] / MODEL)
    cluster.apply(md(world, declared(world, "senti", "qa")))
    time.sleep(1.5)  # the change is under way
    op.stop(kill=True)
    op.start()
    obj = wait_ready(cluster, world, "both adapters after the restart", timeout=300, adaptersLoaded=["qa", "senti"])
    after = version_numbers(world["repo"] / MODEL)
    assert len(after) - len(before) <= 1  # at most the one new version: no duplicate written after the restart
    assert set(pod_versions(world).values()) == {int(obj["status"]["liveVersion"])}


def test_two_operators_racing_end_in_one_state(cluster, world, created):
    second = Operator(cluster, world["port"], world["root"] / "operator-2.log").start()
    try:
        before = version_numbers(world["repo"] / MODEL)
        cluster.apply(md(world, declared(world, "qa")))
        obj = wait_ready(cluster, world, "qa served with two operators", timeout=300, adaptersLoaded=["qa"])
        after = version_numbers(world["repo"] / MODEL)
        assert len(after) - len(before) <= 1  # one version written, by whichever won the lock
        assert set(pod_versions(world).values()) == {int(obj["status"]["liveVersion"])}
    finally:
        second.stop()


def _rolled_back(cluster, world, what: str) -> dict:
    def check():
        obj = get_md(cluster)
        c = condition(obj, "Degraded")
        gen = obj["metadata"]["generation"]
        rb = (obj.get("status") or {}).get("lastRollback") or {}
        ok = c.get("status") == "True" and c.get("observedGeneration") == gen and rb.get("observedGeneration") == gen
        return obj if ok else None

    try:
        return cluster.wait(what, check, timeout=180, every=1)
    except AssertionError as e:
        raise AssertionError(f"{e}\nstatus: {get_md(cluster).get('status')}\n{world['operator'].tail()}") from None


@pytest.mark.parametrize("canary", [False, True], ids=["smoke-after-switch", "canary"])
def test_a_version_that_fails_its_smoke_is_rolled_back_and_not_retried(cluster, world, created, canary):
    cluster.apply(md(world, declared(world, "senti"), canary=canary))
    good = wait_ready(cluster, world, "senti served", adaptersLoaded=["senti"])
    live = good["status"]["liveVersion"]
    cluster.apply(md(world, declared(world, "senti", "broken"), canary=canary))
    obj = _rolled_back(cluster, world, "the broken version rolled back")
    st, rb = obj["status"], obj["status"]["lastRollback"]
    assert condition(obj, "Degraded")["reason"] == "RolledBack"
    assert condition(obj, "Ready")["status"] == "False"
    assert rb["toVersion"] == live and rb["fromVersion"] != live and "NaN" in rb["reason"]
    assert st["liveVersion"] == live and st["adaptersLoaded"] == ["senti"]
    assert set(pod_versions(world).values()) == {int(live)}  # every pod still serves the previous version
    state = json.loads((world["repo"] / MODEL / "versions.json").read_text())
    assert state["versions"][rb["fromVersion"]]["status"] == "rolled_back"
    # not retried in this generation: further passes (one a second) leave the rollback, the pods and the log as they are
    tries = len([h for h in state["history"] if h.get("result") == "rolled_back"])
    time.sleep(5)
    again = get_md(cluster)
    assert again["status"]["lastRollback"] == rb and condition(again, "Degraded")["reason"] == "RolledBack"
    state = json.loads((world["repo"] / MODEL / "versions.json").read_text())
    assert len([h for h in state["history"] if h.get("result") == "rolled_back"]) == tries
    assert set(pod_versions(world).values()) == {int(live)}
    # a new generation without the broken adapter serves again
    cluster.apply(md(world, declared(world, "senti")))
    wait_ready(cluster, world, "senti served after the rollback", adaptersLoaded=["senti"], liveVersion=live)
    assert condition(get_md(cluster), "Degraded")["status"] == "False"


def replace_crd(cluster, crd: dict) -> None:
    """Swap the whole CRD for `crd` (as a cluster installed from the previous chart has it after `helm upgrade`)."""
    live = cluster.get("crd", crd["metadata"]["name"])
    crd = {**crd, "metadata": {**crd["metadata"], "resourceVersion": live["metadata"]["resourceVersion"]}}
    cluster.kubectl("replace", "-f", "-", input=yaml.safe_dump(crd))


def spec_fields(crd: dict) -> set[str]:
    return set(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"])


def pod_uids(cluster) -> dict[str, str]:
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.get("pods", "-n", NS, "-l", LABEL)["items"]}


def restart_until_logged(op, cluster, line: str) -> None:
    op.stop()
    start = len(op.log.read_text(errors="replace")) if op.log.exists() else 0
    op.start()
    cluster.wait(
        f"the operator to log {line!r}", lambda: line in op.log.read_text(errors="replace")[start:], timeout=60
    )


def test_an_older_crd_is_made_current_at_start_without_restarting_serving_pods(cluster, world, created):
    op, crd_name = world["operator"], "modeldeployments.taskloom.dev"
    cluster.apply(md(world, declared(world, "senti")))
    wait_ready(cluster, world, "senti served", adaptersLoaded=["senti"])
    cluster.wait("the Deployment's rollout settled (one pod)", lambda: len(pod_uids(cluster)) == 1, timeout=120)
    uids, started = pod_uids(cluster), list(world["pods"].started)
    op.stop()
    replace_crd(cluster, yaml.safe_load(OLD_CRD.read_text()))
    old = cluster.get("crd", crd_name)
    assert "autoscaling" not in spec_fields(old) and revision(old) == 0
    restart_until_logged(op, cluster, f"updated at revision {revision(shipped())}")
    current = cluster.get("crd", crd_name)
    assert "autoscaling" in spec_fields(current) and revision(current) == revision(shipped())
    wait_ready(cluster, world, "Ready after the CRD update", adaptersLoaded=["senti"])
    assert pod_uids(cluster) == uids and world["pods"].started == started  # serving pods untouched

    # current: a restart replaces nothing
    restart_until_logged(op, cluster, "current at revision")
    assert cluster.get("crd", crd_name)["metadata"]["resourceVersion"] == current["metadata"]["resourceVersion"]

    # newer (a later chart's operator ran here): never downgraded
    newer = str(revision(shipped()) + 1)
    cluster.kubectl("annotate", "--overwrite", "crd", crd_name, f"{REVISION}={newer}")
    restart_until_logged(op, cluster, "is newer than this operator's")
    assert cluster.get("crd", crd_name)["metadata"]["annotations"][REVISION] == newer
    cluster.kubectl("annotate", "--overwrite", "crd", crd_name, f"{REVISION}={revision(shipped())}")
    wait_ready(cluster, world, "Ready after the restarts", adaptersLoaded=["senti"])
    assert pod_uids(cluster) == uids and world["pods"].started == started


def deploy_cli(cluster, world, adapter: Path, name: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`taskloom deploy ADAPTER --kubernetes` as a user runs it against the current kubeconfig."""
    cmd = [str(REPO / ".venv" / "bin" / "taskloom"), "deploy", str(adapter), "--kubernetes", "--repo",
           str(world["repo"]), "--name", MODEL, "--namespace", NS, "--model-deployment", NAME,
           "--adapter-name", name, "--timeout", str(timeout)]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=cluster.env(), cwd=REPO, timeout=timeout + 60)


def test_deploy_kubernetes_declares_an_adapter_and_waits_until_the_pods_serve_it(cluster, world, created, tmp_path):
    cluster.apply(md(world, declared(world, "senti")))
    wait_ready(cluster, world, "senti served", adaptersLoaded=["senti"])
    out = deploy_cli(cluster, world, world["adapters"]["qa"], "qa")
    assert out.returncode == 0, out.stderr[-3000:] + world["operator"].tail()
    report = json.loads(out.stdout)
    assert report["adapters"] == ["qa", "senti"] and report["model_deployment"] == f"{NS}/{NAME}"
    obj = get_md(cluster)
    assert declared(world, "qa", "senti") == obj["spec"]["adapters"]  # sha256 computed from the files
    assert condition(obj, "Ready")["status"] == "True" and obj["status"]["liveVersion"] == report["version"]
    assert set(pod_versions(world).values()) == {int(report["version"])}
    server = next(iter(world["pods"].servers.values()))
    with TritonClient(server.http_url, model=MODEL) as c:
        with_qa, base = (c.infer(["A fine film."], adapter=a)["embedding"] for a in ("qa", None))
    assert with_qa.shape == base.shape and abs(with_qa - base).max() > 1e-4  # qa's weights applied

    # weights that no longer match their own digest: refused before anything is declared
    import shutil

    tampered = shutil.copytree(world["adapters"]["qa"], tmp_path / "tampered")
    weights = tampered / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    generation = get_md(cluster)["metadata"]["generation"]
    out = deploy_cli(cluster, world, tampered, "tampered")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "sha256 does not match" in out.stderr and "Traceback" not in out.stderr
    assert get_md(cluster)["metadata"]["generation"] == generation

    # an adapter whose smoke fails: the operator rolls back, the command names why in one line
    out = deploy_cli(cluster, world, world["adapters"]["broken"], "broken", timeout=180)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr + world["operator"].tail()
    assert "Degraded (RolledBack)" in out.stderr and out.stdout == ""
    assert set(pod_versions(world).values()) == {int(report["version"])}  # the pods still serve qa and senti
    cluster.apply(md(world, declared(world, "senti")))
    wait_ready(cluster, world, "senti served again", adaptersLoaded=["senti"])


def test_deploy_step_publishes_the_model_and_waits_for_the_model_deployment(cluster, world, created, tmp_path,
                                                                              monkeypatch):
    """The pipelines' deploy step with `model_deployment`: the model written as the next version, the
    ModelDeployment patched to it (no adapters: a new base serves none of the old ones), Ready once every
    pod serves it; versions.json follows. A pod restarted afterwards loads it by itself (config.pbtxt)."""
    from taskloom.serve.repository import resolve_model_dir
    from taskloom.specs import DeploySpec
    from taskloom.steps import deploy_step

    cluster.apply(md(world, declared(world, "senti")))
    before = wait_ready(cluster, world, "senti served", adaptersLoaded=["senti"])
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))
    options = DeploySpec(model_name=MODEL, model_repository=str(world["repo"]), model_deployment=NAME, namespace=NS,
                         timeout=240)
    try:
        result = deploy_step(resolve_model_dir("minilm"), tmp_path / "out", options)
    except Exception as e:
        raise AssertionError(f"{e}\n{world['operator'].tail()}") from None
    version = result["version"]
    assert version > int(before["status"]["liveVersion"])
    obj = get_md(cluster)
    assert obj["spec"]["model"]["version"] == str(version) and obj["spec"]["adapters"] == []
    assert obj["status"]["liveVersion"] == str(version) and obj["status"]["adaptersLoaded"] == []
    assert condition(obj, "Ready")["status"] == "True"
    assert set(pod_versions(world).values()) == {version}
    assert json.loads((tmp_path / "out" / "deploy.json").read_text())["version"] == str(version)
    state = json.loads((world["repo"] / MODEL / "versions.json").read_text())
    assert state["serving"] == version and state["versions"][str(version)]["status"] == "serving"
    assert re.search(rf"versions:\s*\[\s*{version}\s*\]", (world["repo"] / MODEL / "config.pbtxt").read_text())

    # the same step with a Triton URL as well is refused before anything is written
    from taskloom.errors import UserError

    with pytest.raises(UserError, match="give one"):
        deploy_step(resolve_model_dir("minilm"), tmp_path / "again", options.model_copy(update={"server_url": "x"}))
    assert max(version_numbers(world["repo"] / MODEL)) == version


def test_delete_with_the_finalizer_unloads_and_children_are_collected(cluster, world, created):
    cluster.kubectl("delete", "modeldeployment", NAME, "-n", NS, "--wait=false")
    cluster.wait(
        "the ModelDeployment gone",
        lambda: cluster.kubectl("get", "modeldeployment", NAME, "-n", NS, check=False).returncode != 0,
        timeout=120,
    )
    cluster.wait(
        "the Deployment collected",
        lambda: cluster.kubectl("get", "deployment", NAME, "-n", NS, check=False).returncode != 0,
        timeout=120,
    )
    cluster.wait(
        "the Service collected",
        lambda: cluster.kubectl("get", "service", NAME, "-n", NS, check=False).returncode != 0,
        timeout=60,
    )
    assert any(e for e in cluster.get("events", "-n", NS)["items"] if e.get("reason") == "Unloaded")
