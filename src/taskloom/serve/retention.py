"""Delete old versions of served models, never one a deployment can still ask for.

    taskloom repo prune repo --keep 3 --dry-run
    taskloom repo prune s3://models/repo --keep 3 --deployments mdeps.yaml

A version is kept when it is one of the newest `keep` of its model, or referenced:
- the version serving (versions.json `serving`) and the one config.pbtxt names (what a restart loads);
- the rollback target: the version the serving one replaced (what `taskloom deploy --rollback` goes back to);
- a version named by a ModelDeployment record (`spec.model.version` or `status.liveVersion` of one whose
  `spec.model.name` is the model) in a YAML/JSON file given with --deployments, e.g. the output of
  `kubectl get modeldeployments -o yaml` (a List or single objects).
Everything else older is deleted: versions.json marks it "pruned" (so the record of what served stays),
then the folder goes (renamed to a hidden name first, so Triton never sees half of it). On S3 the marker
object stops listing a version before its objects are deleted.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import yaml

from taskloom import objectstore
from taskloom.artifacts import write_json
from taskloom.errors import UserError
from taskloom.serve.deploy import CANDIDATE_SUFFIX, deploy_lock, read_state
from taskloom.serve.repository import VERSIONS_FILE, version_numbers

CONFIG_VERSION_RE = re.compile(r"specific\s*:\s*\{\s*versions\s*:\s*\[\s*(\d+)")


def config_version(text: str | None) -> int | None:
    """The version a config.pbtxt serves (its version_policy), None when it names none."""
    m = CONFIG_VERSION_RE.search(text or "")
    return int(m.group(1)) if m else None


def rollback_target(state: dict) -> int | None:
    """The version the serving one replaced: where `taskloom deploy --rollback` goes."""
    current = state.get("serving")
    for h in reversed(state.get("history", [])):
        if h.get("result") == "serving" and h.get("version") == current and h.get("from"):
            return int(h["from"])
    return None


def read_deployments(paths: list[Path]) -> dict[str, dict[int, str]]:
    """{model name: {version: "deployment FILE: NAME"}} from ModelDeployment-like records in YAML/JSON files."""
    out: dict[str, dict[int, str]] = {}
    for path in paths:
        try:
            docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
        except OSError as e:
            raise UserError(f"--deployments {path}: cannot read it ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise UserError(f"--deployments {path}: not YAML/JSON ({str(e).splitlines()[0]})") from None
        items: list[Any] = []
        for doc in docs:
            items += doc.get("items", []) if isinstance(doc, dict) and "items" in doc else [doc]
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("spec"), dict):
                raise UserError(f"--deployments {path}: record {i + 1}: expected an object with spec.model")
            model = item["spec"].get("model") or {}
            name = model.get("name")
            if not name:
                raise UserError(f"--deployments {path}: record {i + 1}: spec.model.name missing")
            who = f"deployment {path}: {(item.get('metadata') or {}).get('name', name)}"
            for v in (model.get("version"), (item.get("status") or {}).get("liveVersion")):
                if v not in (None, ""):
                    if not str(v).isdigit():
                        raise UserError(f"--deployments {path}: record {i + 1}: version {v!r} is not a number")
                    out.setdefault(name, {})[int(v)] = who
    return out


def plan(versions: list[int], keep: int, state: dict, config_text: str | None, records: dict[int, str]) -> dict:
    """{"versions", "keep": {version: why}, "delete": [...]} for one model; decides, changes nothing."""
    why: dict[int, str] = {}
    for v in sorted(versions)[-keep:]:
        why[v] = f"newest {keep}"
    named: list[tuple[int | None, str]] = [
        (state.get("serving"), "serving"),
        (config_version(config_text), "config.pbtxt"),
        (rollback_target(state), "rollback target"),
        *records.items(),
    ]
    for ref, reason in named:
        if ref is not None and int(ref) in versions:
            why.setdefault(int(ref), reason)
    return {
        "versions": sorted(versions),
        "keep": {v: why[v] for v in sorted(why)},
        "delete": [v for v in sorted(versions) if v not in why],
    }


def _mark_pruned(state: dict, deleted: list[int], keep: int) -> dict:
    for v in deleted:
        state.setdefault("versions", {}).setdefault(str(v), {})["status"] = "pruned"
    state.setdefault("history", []).append(
        {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "action": "prune",
            "versions": deleted,
            "keep": keep,
            "result": "pruned",
        }
    )
    return state


def _prune_local(repo: Path, keep: int, dry_run: bool, records, only: str | None) -> dict:
    if not repo.is_dir():
        raise UserError(f"{repo}: no such model repository folder")
    models = {}
    for folder in sorted(p for p in repo.iterdir() if p.is_dir()):
        name = folder.name
        if name.startswith(".") or name.endswith(CANDIDATE_SUFFIX) or (only and name != only):
            continue
        versions = version_numbers(folder)
        if not versions:
            continue
        with deploy_lock(repo, name):  # not while a deploy of this model runs
            state = read_state(folder)
            cfg = folder / "config.pbtxt"
            p = plan(versions, keep, state, cfg.read_text() if cfg.exists() else None, records.get(name, {}))
            if p["delete"] and not dry_run:
                write_json(folder / VERSIONS_FILE, _mark_pruned(state, p["delete"], keep))
                for v in p["delete"]:
                    objectstore.remove_version_folder(folder / str(v))
        models[name] = p
    return models


def _prune_s3(url: str, keep: int, dry_run: bool, records, only: str | None) -> dict:
    loc = objectstore.parse_url(url)
    s3 = objectstore.client()
    marker = objectstore.read_marker(loc, s3)
    if marker is None:
        raise UserError(f"{loc}: no {objectstore.MANIFEST} (not a repository pushed with `taskloom repo push`)")
    files: dict[str, dict] = dict(marker["files"])
    by_model: dict[str, set[int]] = {}
    for rel in files:
        unit = objectstore.version_unit(rel)
        if unit and unit.count("/") == 1:
            name, v = unit.split("/")
            if not name.endswith(CANDIDATE_SUFFIX) and (not only or name == only):
                by_model.setdefault(name, set()).add(int(v))
    models = {}
    gone: list[str] = []
    for name, versions in sorted(by_model.items()):
        raw = objectstore.get_bytes(loc, f"{name}/{VERSIONS_FILE}", s3)
        cfg = objectstore.get_bytes(loc, f"{name}/config.pbtxt", s3)
        state = json.loads(raw) if raw else {"serving": config_version(cfg.decode() if cfg else None), "history": []}
        p = plan(sorted(versions), keep, state, cfg.decode() if cfg else None, records.get(name, {}))
        models[name] = p
        if p["delete"] and not dry_run:
            data = (json.dumps(_mark_pruned(state, p["delete"], keep), indent=2, default=str) + "\n").encode()
            digest = hashlib.sha256(data).hexdigest()
            objectstore.put_bytes(loc, f"{name}/{VERSIONS_FILE}", data, s3)
            files[f"{name}/{VERSIONS_FILE}"] = {"sha256": digest, "size": len(data)}
            side = f"{VERSIONS_FILE}.sha256"
            if f"{name}/{side}" in files:
                line = f"{digest}  {VERSIONS_FILE}\n".encode()
                objectstore.put_bytes(loc, f"{name}/{side}", line, s3)
                files[f"{name}/{side}"] = {"sha256": hashlib.sha256(line).hexdigest(), "size": len(line)}
            units = {f"{name}/{v}" for v in p["delete"]}
            gone += [rel for rel in files if objectstore.version_unit(rel) in units]
    if gone:
        objectstore.write_marker(loc, {r: i for r, i in files.items() if r not in set(gone)}, s3)
        objectstore.delete_keys(loc, gone, s3)
    return models


def prune(
    repository: str | Path,
    keep: int,
    *,
    dry_run: bool = False,
    deployments: list[Path] | None = None,
    name: str | None = None,
) -> dict:
    """Delete every version older than the newest `keep` that nothing references (see the module
    docstring), in a local repository folder or an s3:// one; `name`: only this model.
    Returns {"repository", "dry_run", "models": {name: {"versions", "keep": {v: why}, "delete"}}}."""
    if keep < 1:
        raise UserError(f"--keep {keep}: must be at least 1 (the newest version always stays)")
    records = read_deployments(list(deployments or []))
    if objectstore.is_s3(str(repository)):
        models = _prune_s3(str(repository), keep, dry_run, records, name)
    else:
        models = _prune_local(Path(repository), keep, dry_run, records, name)
    if name and name not in models:
        raise UserError(f"{repository}: no model {name!r} with versions")
    return {"repository": str(repository), "dry_run": dry_run, "models": models}
