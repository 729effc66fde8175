"""Publish a new version of a served model through Triton's model-control API; check it; roll back.

    taskloom deploy runs/rt/adapter --repo repo --url http://127.0.0.1:8000     # add or replace an adapter
    taskloom deploy runs/merged --repo repo --url http://127.0.0.1:8000          # new base weights (+ --head TASK)
    taskloom deploy --remove rt-sentiment --repo repo --url http://127.0.0.1:8000
    taskloom deploy --rollback --repo repo --url http://127.0.0.1:8000

The server must run with explicit model control (`taskloom serve` does). One deploy, in order:
1. check what is published (adapter folder + its sha256, or a model folder with weights): a bad one is
   refused before anything is written, and the running version keeps serving;
2. write version N+1 beside the served N (files of older versions hard-linked, new ones copied, a
   manifest with the sha256 of every file, which the model checks again when it loads);
3. canary: load N+1 under the side name `<name>.candidate` and smoke it (finite, unit-norm embeddings
   for the base and the new adapter, expected labels): on failure clients never saw N+1;
4. switch: config.pbtxt names N+1 and Triton reloads the model: N keeps answering until N+1 is ready
   and in-flight requests finish on N, so no request is dropped; then readiness + smoke on the real name;
5. a failure after the switch writes config.pbtxt back to N and reloads it: rolled back.
A deploy never deletes a version (`taskloom repo prune` removes old unreferenced ones, taskloom.serve.retention):
versions.json says which one serves and why each other one does not.
Adapters change the same way (a new version holding the new set), so adding, replacing or removing
one needs no server restart, and a server restarted later serves exactly what config.pbtxt names.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from taskloom.artifacts import staging_dir, write_json, write_text
from taskloom.errors import UserError
from taskloom.serve.adapters import check_adapter, check_name
from taskloom.serve.client import TritonClient
from taskloom.serve.repository import (
    VERSIONS_FILE,
    config_for,
    read_manifest,
    resolve_model_dir,
    serving_options,
    version_numbers,
    version_record,
    write_version,
)

SMOKE_TEXTS = ("A fine, funny and moving film.", "Dull and far too long.")
CANDIDATE_SUFFIX = ".candidate"


class DeployError(UserError):
    """The new version was refused or rolled back; `.report` says which version serves now."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextlib.contextmanager
def deploy_lock(repo: Path, name: str):
    """One deploy per model at a time (flock on a file beside the model folder)."""
    import fcntl

    check_name(name, "model name")  # every deploy, publish and rollback comes through here before a path
    repo.mkdir(parents=True, exist_ok=True)
    with open(repo / f".{name}.deploy.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{repo / name}: another deploy of {name!r} is running") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_state(model_folder: Path) -> dict:
    """versions.json (rebuilt from the folders and config.pbtxt when missing)."""
    import re

    path = model_folder / VERSIONS_FILE
    if path.exists():
        return json.loads(path.read_text())
    versions = version_numbers(model_folder)
    serving = versions[-1] if versions else None
    cfg = model_folder / "config.pbtxt"
    if cfg.exists():
        m = re.search(r"specific\s*:\s*\{\s*versions\s*:\s*\[\s*(\d+)", cfg.read_text())
        serving = int(m.group(1)) if m else serving
    return {
        "name": model_folder.name,
        "serving": serving,
        "versions": {str(v): {"status": "serving" if v == serving else "retired"} for v in versions},
        "history": [],
    }


def write_state(model_folder: Path, state: dict) -> None:
    write_json(model_folder / VERSIONS_FILE, state)


def record_outcome(
    model_folder: Path,
    state: dict,
    version: int,
    manifest: dict,
    status: str,
    reason: str | None,
    previous: int | None,
    serving: int | None,
    action: str,
) -> None:
    """versions.json after a try at `version`: its status (serving, refused, rolled_back), the previous one
    retired when another now serves, and a history line. `taskloom deploy` and the operator both write it."""
    state.setdefault("versions", {})[str(version)] = version_record(manifest, status, reason)
    if serving != previous and previous is not None:
        state["versions"].setdefault(str(previous), {})["status"] = "retired"
    state["serving"] = serving
    state.setdefault("history", []).append(
        {"ts": now_iso(), "action": action, "version": version, "from": previous, "result": status, "reason": reason}
    )
    write_state(model_folder, state)


def record_candidate(model_folder: Path, state: dict, version: int, manifest: dict, action: str, source) -> None:
    """versions.json after `version` was written and before anything serves it: a candidate, and a history
    line naming the version it came from (`taskloom deploy` publishing, the operator writing a spec)."""
    state.setdefault("versions", {})[str(version)] = version_record(manifest, "candidate")
    state.setdefault("history", []).append(
        {"ts": now_iso(), "action": action, "version": version, "from": source, "result": "candidate"}
    )
    write_state(model_folder, state)


def write_config(model_folder: Path, version: int, name: str) -> None:
    write_text(
        model_folder / "config.pbtxt",
        config_for(read_manifest(model_folder / str(version)), version, name),
        digest=False,
    )


def smoke(
    client,
    manifest: dict,
    adapters: list,
    texts=SMOKE_TEXTS,
    expect: list[str] | None = None,
    expect_adapter: str | None = None,
) -> dict:
    """One request per target (None = the base, else an adapter): embeddings finite and unit-norm, labels
    from the head's label set, and `expect` (labels for `texts`) for `expect_adapter`. Returns the checks;
    raises UserError naming the first that failed."""
    texts = list(texts)
    checks = {}
    for adapter in adapters:
        what = f"adapter {adapter!r}" if adapter else "the base"
        out = client.infer(texts, adapter=adapter)
        emb = out["embedding"]
        if emb is None or emb.shape != (len(texts), manifest["dim"]):
            raise UserError(
                f"smoke: {what}: EMBEDDING shape {None if emb is None else emb.shape}, "
                f"expected {(len(texts), manifest['dim'])}"
            )
        if not np.isfinite(emb).all():
            raise UserError(f"smoke: {what}: EMBEDDING holds NaN or infinite values")
        norms = np.linalg.norm(emb, axis=1)
        if np.abs(norms - 1).max() > 1e-3:
            raise UserError(f"smoke: {what}: EMBEDDING is not unit-norm (norms {norms.round(4).tolist()})")
        labels = out["label"]
        known = manifest["labels"] if adapter is None else (manifest["adapters"] or {}).get(adapter, {}).get("labels")
        if known and (labels is None or not set(labels) <= set(known)):
            raise UserError(f"smoke: {what}: LABEL {labels} not among its head's labels {known}")
        if expect is not None and adapter == expect_adapter and labels != list(expect):
            raise UserError(f"smoke: {what}: labels {labels}, expected {list(expect)}")
        checks[adapter or ""] = {"ok": True, "labels": labels, "max_norm_error": float(np.abs(norms - 1).max())}
    return checks


def _client(
    server_url: str,
    name: str,
    protocol: str,
    timeout: float,
    admin_key: str | None = None,
    publish: Callable[[], None] | None = None,
):
    client = TritonClient(
        server_url, model=name, protocol=protocol, timeout=timeout, retries=3, backoff=0.2, admin_key=admin_key
    )
    return client if publish is None else _Publishing(client, publish)


class _Publishing:
    """A client that publishes the repository before each load: the server reads object storage, so what
    was just written locally must be there before it is asked to load it."""

    def __init__(self, client, publish: Callable[[], None]):
        self._client, self._publish = client, publish

    def load_model(self, *args, **kwargs):
        self._publish()
        return self._client.load_model(*args, **kwargs)

    def __getattr__(self, attr: str):
        return getattr(self._client, attr)


def _require_model_control(client, name: str) -> None:
    """Explicit model control is needed: unloading a model that is not loaded is a no-op there, and
    refused by a server that loads everything itself."""
    try:
        client.unload_model(name + CANDIDATE_SUFFIX + ".probe")
    except UserError as e:
        if "not allowed" in str(e):
            raise UserError(
                f"server {client.protocol}://{client.url}: model control is off; start it with "
                "`taskloom serve` (explicit model control)"
            ) from None
        raise


def _served_version(client, name: str) -> int | None:
    for m in client.repository_index():
        if m.get("name") == name and m.get("state") == "READY" and str(m.get("version", "")).isdigit():
            return int(m["version"])
    return None


class LoadFailed(UserError):
    """Triton refused to load the version: it kept serving the one it had."""


def activate(
    client, model_folder: Path, name: str, version: int, manifest: dict, targets: list, texts, expect, expect_adapter
) -> dict:
    """config.pbtxt → `version`, reload, check readiness and the served version, smoke. Raises UserError
    (LoadFailed when Triton did not load it: the old version is still the one served)."""
    write_config(model_folder, version, name)
    try:
        client.load_model(name)
    except UserError as e:
        raise LoadFailed(str(e)) from None
    served = _served_version(client, name)
    if served != version or not client.is_model_ready(name):
        raise UserError(f"model {name}: version {version} is not ready after loading (serving: {served})")
    return smoke(client, manifest, targets, texts, expect, expect_adapter)


def restore(client, model_folder: Path, name: str, version: int, failure: UserError, texts) -> None:
    """Serve `version` again after `failure` of a newer one: after a failed load Triton still serves it
    (only config.pbtxt goes back); after a load that succeeded, it is loaded again and smoked."""
    if isinstance(failure, LoadFailed):
        write_config(model_folder, version, name)
        return
    activate(client, model_folder, name, version, read_state_manifest(model_folder, version), [None], texts, None, None)


def run_canary(
    client, repo: Path, name: str, version: int, manifest: dict, targets: list, texts, expect, expect_adapter
) -> dict:
    """Load `version` as <name>.candidate (a config + a link to the version folder) and smoke it."""
    import os

    cand = name + CANDIDATE_SUFFIX
    folder = repo / cand
    _settle(client, cand)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        os.symlink(f"../{name}/{version}", folder / str(version))
        write_text(folder / "config.pbtxt", config_for(manifest, version, cand), digest=False)
        client.load_model(cand)
        with _client_like(client, cand) as side:
            return smoke(side, manifest, targets, texts, expect, expect_adapter)
    finally:
        with contextlib.suppress(UserError):  # asynchronous: the candidate's process exits while the real model loads
            client.unload_model(cand)
        shutil.rmtree(folder, ignore_errors=True)


def _settle(client, model: str) -> None:
    """Wait until the server is not loading or unloading `model`: a deploy killed mid-canary leaves its load
    running, and removing the files under a load in progress hangs Triton's Python backend for good."""
    end = time.monotonic() + client.timeout
    while any(m.get("name") == model and m.get("state") in ("LOADING", "UNLOADING") for m in client.repository_index()):
        if time.monotonic() > end:
            raise UserError(f"model {model}: the server is still loading or unloading it after {client.timeout:g} s")
        time.sleep(0.2)


def _client_like(client, model: str):
    return TritonClient(
        client.url,
        model=model,
        protocol=client.protocol,
        timeout=client.timeout,
        retries=client.retries,
        backoff=client.backoff,
        admin_key=client.admin_key,
    )


def _plan(model_folder: Path, state: dict, source, adapter_name, remove, head_task) -> dict:
    """What the new version holds: base folder, base head, adapters {name: folder}; checked, nothing written."""
    serving = state.get("serving")
    prev = read_manifest(model_folder / str(serving)) if serving is not None else None
    remove = [check_name(r) for r in (remove or [])]
    src = Path(str(source)) if source is not None else None
    is_adapter = src is not None and (src / "adapter_config.json").exists()
    if src is None and not remove:
        raise UserError("deploy: give an adapter folder, a model folder, or adapters to remove")
    if src is not None and not is_adapter and adapter_name:
        raise UserError(f"{src}: --adapter-name is for adapter folders (no adapter_config.json here)")
    if is_adapter or src is None:
        if prev is None:
            raise UserError(f"{model_folder}: nothing served yet; deploy a model folder (or catalog name) first")
        version_dir = model_folder / str(serving)
        adapters = {k: version_dir / "adapters" / k for k in (prev.get("adapters") or {})}
        missing = [r for r in remove if r not in adapters]
        if missing:
            raise UserError(f"--remove {missing[0]}: not served (adapters: {', '.join(sorted(adapters)) or 'none'})")
        for r in remove:
            del adapters[r]
        added = None
        if is_adapter:
            info = check_adapter(src, name=adapter_name, dim=prev["dim"])
            added = info["name"]
            adapters[added] = src
        return {
            "src": version_dir / "weights",
            "head_dir": version_dir / "head" if prev.get("labels") else None,
            "head_task": prev.get("head_task"),
            "adapters": adapters,
            "added": added,
            "prev": prev,
            "source": str(src) if src is not None else f"remove {','.join(remove)}",
        }
    if remove:
        raise UserError("--remove: only with an adapter folder or alone (a new model folder serves no adapters)")
    model = resolve_model_dir(source)
    head_dir = None
    if head_task:
        head_dir = model / "heads" / head_task
        if not (head_dir / "head.safetensors").exists():
            raise UserError(f"{head_dir}: no classification head")
    return {
        "src": model,
        "head_dir": head_dir,
        "head_task": head_task,
        "adapters": {} if prev is not None and prev.get("adapters") is not None else None,
        "added": None,
        "prev": prev,
        "source": str(model),
    }


def write_next_version(
    repo: Path,
    name: str,
    src: Path,
    *,
    head_dir: Path | None,
    head_task: str | None,
    adapters: dict[str, Path] | None,
    options: dict,
) -> tuple[int, dict]:
    """Write version N+1 of model `name` (staged, then renamed: a reader never sees half of it); the
    caller holds the model's deploy lock. Returns the version and its manifest."""
    model_folder = repo / name
    for stale in model_folder.glob(".*.staging.*"):  # left by a killed deploy: the lock says none is running
        shutil.rmtree(stale, ignore_errors=True)
    version = max([*version_numbers(model_folder), 0]) + 1
    stage = staging_dir(model_folder / str(version))
    try:
        manifest = write_version(
            stage,
            src,
            name=name,
            version=version,
            head_dir=head_dir,
            head_task=head_task,
            adapters=adapters,
            options=options,
            repo_root=repo,
        )
        stage.rename(model_folder / str(version))
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return version, manifest


def publish_version(
    repo_dir,
    source,
    *,
    name: str = "taskloom",
    head_task: str | None = None,
    adapter_name: str | None = None,
    serve: bool = False,
) -> dict:
    """Write the next version of `name` without loading it anywhere (a candidate in versions.json): a
    model folder (a new base, serving no adapters) or an adapter folder (added to the served set). What a
    deploy through a ModelDeployment or a files-only deploy does first. `serve`: also make it the served
    version on disk (config.pbtxt, versions.json) under the same lock, so no other deploy's version comes
    between: the files-only deploy, for a server that polls its repository or one started later (a
    running server with explicit control is `deploy`'s). Returns {"model", "version", "revision", "adapter"}."""
    repo = Path(repo_dir)
    model_folder = repo / name
    with deploy_lock(repo, name):
        state = read_state(model_folder)
        plan = _plan(model_folder, state, source, adapter_name, None, head_task)
        previous = state.get("serving")
        options = serving_options(**((plan["prev"] or {}).get("serving") or {}))
        version, manifest = write_next_version(
            repo, name, plan["src"], head_dir=plan["head_dir"], head_task=plan["head_task"], adapters=plan["adapters"],
            options=options,
        )  # fmt: skip
        record_candidate(model_folder, state, version, manifest, "publish", previous)
        if serve:
            write_config(model_folder, version, name)
            record_outcome(model_folder, state, version, manifest, "serving", None, previous, version, "publish")
    return {"model": name, "version": version, "revision": manifest["revision"], "adapter": plan["added"]}


def deploy(
    repo_dir,
    server_url: str,
    model_dir_or_adapter=None,
    *,
    name: str = "taskloom",
    adapter_name: str | None = None,
    remove: list[str] | None = None,
    head_task: str | None = None,
    protocol: str = "http",
    smoke_texts=SMOKE_TEXTS,
    expect_labels: list[str] | None = None,
    canary: bool = True,
    serving: dict | None = None,
    timeout: float = 300,
    admin_key: str | None = None,
    publish: Callable[[], None] | None = None,
) -> dict:
    """Publish `model_dir_or_adapter` as the next version of model `name` in `repo_dir`, served by the
    Triton at `server_url`; returns {"model", "version", "previous", "status": "serving", ...}.

    An adapter folder (adapter_config.json) is added to (or replaces its namesake in) the served set;
    a model folder or catalog name replaces the base (and serves no adapters); `remove` drops adapters.
    A refused or rolled-back version raises DeployError (its `.report`): the previous one serves.
    admin_key: for a server whose model control is restricted (default: $TASKLOOM_TRITON_ADMIN_KEY).
    publish: for a server reading object storage: called before each load and once at the end
    (taskloom.objectstore.working_copy pushes the local copy `repo_dir`).
    """
    t0 = time.monotonic()
    repo = Path(repo_dir)
    model_folder = repo / name
    if expect_labels is not None and len(expect_labels) != len(smoke_texts):
        raise UserError(f"expect_labels: {len(expect_labels)} labels for {len(smoke_texts)} smoke texts")
    with deploy_lock(repo, name):
        state = read_state(model_folder)
        plan = _plan(model_folder, state, model_dir_or_adapter, adapter_name, remove, head_task)
        prev = plan["prev"]
        options = serving_options(**{**((prev or {}).get("serving") or {}), **(serving or {})})
        client = _client(server_url, name, protocol, timeout, admin_key, publish)
        try:
            _require_model_control(client, name)
            previous = state.get("serving")
            _settle(client, name)  # a killed deploy's switch may still be loading
            if previous is not None:
                _heal_interrupted(client, model_folder, state, name, previous, smoke_texts)
            if previous is not None and _served_version(client, name) != previous:
                raise UserError(
                    f"model {name}: the server does not serve version {previous} named in "
                    f"{model_folder}/config.pbtxt (is {server_url} serving {repo}?)"
                )
            if previous is not None:  # config.pbtxt names what versions.json says serves (heals an interrupted deploy)
                write_config(model_folder, previous, name)
            try:
                version, manifest = write_next_version(
                    repo, name, plan["src"], head_dir=plan["head_dir"], head_task=plan["head_task"],
                    adapters=plan["adapters"], options=options,
                )  # fmt: skip
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise UserError(
                    f"{model_folder}: no space left on its device ({e.strerror}); "
                    f"version {previous} keeps serving, nothing was written"
                ) from None
            targets = [None] + ([plan["added"]] if plan["added"] else sorted(manifest.get("adapters") or {}))
            expect_adapter = plan["added"]
            report = {
                "model": name,
                "version": version,
                "previous": previous,
                "source": plan["source"],
                "adapters": sorted(manifest["adapters"]) if manifest.get("adapters") is not None else None,
                "revision": manifest["revision"],
            }
            state.setdefault("versions", {})[str(version)] = version_record(manifest, "candidate")

            def finish(status: str, reason: str | None, serving_now):
                record_outcome(model_folder, state, version, manifest, status, reason, previous, serving_now, "deploy")
                report.update(
                    status=status, serving=serving_now, reason=reason, seconds=round(time.monotonic() - t0, 2)
                )
                return report

            if canary and previous is not None:
                try:
                    report["canary"] = run_canary(
                        client, repo, name, version, manifest, targets, smoke_texts, expect_labels, expect_adapter
                    )
                except UserError as e:
                    finish("refused", f"canary: {e}", previous)
                    raise DeployError(
                        f"version {version} of {name} refused ({e}); version {previous} keeps serving", report
                    ) from None
            try:
                report["smoke"] = activate(
                    client, model_folder, name, version, manifest, targets, smoke_texts, expect_labels, expect_adapter
                )
            except UserError as e:
                reason = str(e)
                if previous is None:  # nothing to go back to: no config.pbtxt, so a restart loads nothing half-checked
                    (model_folder / "config.pbtxt").unlink(missing_ok=True)
                    finish("refused", reason, None)
                    raise DeployError(
                        f"version {version} of {name} failed ({reason}); nothing serves", report
                    ) from None
                try:
                    restore(client, model_folder, name, previous, e, smoke_texts)
                except UserError as e2:
                    finish("rolled_back", reason, previous)
                    raise DeployError(
                        f"version {version} of {name} failed ({reason}); rolling back to {previous} failed too ({e2})",
                        report,
                    ) from None
                finish("rolled_back", reason, previous)
                raise DeployError(
                    f"version {version} of {name} failed ({reason}); rolled back to version {previous}", report
                ) from None
            return finish("serving", None, version)
        finally:
            client.close()
            if publish is not None:  # versions.json and config.pbtxt as the deploy left them
                publish()


def _heal_interrupted(client, model_folder: Path, state: dict, name: str, previous: int, texts) -> None:
    """A deploy killed after its switch leaves the server on a version versions.json never recorded:
    serve the recorded one again (loaded and smoked) and record the other as rolled back."""
    served = _served_version(client, name)
    if served is None or served == previous or str(served) in state.get("versions", {}):
        return
    if not (model_folder / str(served)).is_dir():
        return  # not this repository's version: the caller's check names the mismatch
    restore(client, model_folder, name, previous, UserError("interrupted deploy"), texts)
    record_outcome(
        model_folder,
        state,
        served,
        read_state_manifest(model_folder, served),
        "rolled_back",
        "a deploy was interrupted after its switch",
        previous,
        previous,
        "heal",
    )


def read_state_manifest(model_folder: Path, version: int) -> dict:
    return read_manifest(model_folder / str(version))


def rollback(
    repo_dir,
    server_url: str,
    name: str = "taskloom",
    to_version: int | None = None,
    protocol: str = "http",
    smoke_texts=SMOKE_TEXTS,
    timeout: float = 300,
    admin_key: str | None = None,
    publish: Callable[[], None] | None = None,
) -> dict:
    """Serve an older version again (default: the one served before the current one); publish: as for deploy."""
    t0 = time.monotonic()
    repo = Path(repo_dir)
    model_folder = repo / name
    with deploy_lock(repo, name):
        state = read_state(model_folder)
        current = state.get("serving")
        if current is None:
            raise UserError(f"{model_folder}: no version is serving; nothing to roll back")
        if to_version is None:
            earlier = [
                h["from"]
                for h in reversed(state.get("history", []))
                if h.get("result") == "serving" and h.get("version") == current and h.get("from")
            ]
            if not earlier:
                raise UserError(f"{model_folder}: no version served before {current}; give --to-version")
            to_version = earlier[0]
        if not (model_folder / str(to_version)).is_dir():
            raise UserError(f"--to-version {to_version}: no such version in {model_folder}")
        if to_version == current:
            raise UserError(f"--to-version {to_version}: already serving")
        manifest = read_state_manifest(model_folder, to_version)
        client = _client(server_url, name, protocol, timeout, admin_key, publish)
        try:
            _require_model_control(client, name)
            targets = [None, *sorted(manifest.get("adapters") or {})]
            try:
                checks = activate(client, model_folder, name, to_version, manifest, targets, smoke_texts, None, None)
            except UserError as e:
                restore(client, model_folder, name, current, e, smoke_texts)
                if publish is not None:  # config.pbtxt names `current` again
                    publish()
                raise UserError(
                    f"rollback of {name} to version {to_version} failed ({e}); version {current} serves"
                ) from None
        finally:
            client.close()
        state["versions"].setdefault(str(current), {})["status"] = "retired"
        state["versions"].setdefault(str(to_version), {})["status"] = "serving"
        state["versions"][str(to_version)].pop("reason", None)
        state["serving"] = to_version
        state.setdefault("history", []).append(
            {
                "ts": now_iso(),
                "action": "rollback",
                "version": to_version,
                "from": current,
                "result": "serving",
                "reason": None,
            }
        )
        write_state(model_folder, state)
        if publish is not None:
            publish()
        return {
            "model": name,
            "status": "serving",
            "serving": to_version,
            "previous": current,
            "smoke": checks,
            "seconds": round(time.monotonic() - t0, 2),
        }
