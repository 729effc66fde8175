"""Which version of the model repository serves a ModelDeployment's spec: found, or written once.

A version serves the spec when it holds the base's weights and head and exactly the declared adapters
with the declared sha256s (its manifest records every file's digest). One is written only when none
does, under the same lock as `taskloom deploy`, so a restarted or second operator finds it instead of
writing a duplicate. A declared sha256 that the adapter's file does not have is refused before anything
is written.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from taskloom.artifacts import sha256_file
from taskloom.errors import UserError
from taskloom.operator.spec import ModelSpec
from taskloom.serve.adapters import check_adapter
from taskloom.serve.deploy import (
    deploy_lock,
    read_state,
    record_candidate,
    record_outcome,
    write_next_version,
)
from taskloom.serve.repository import (
    read_manifest,
    serving_options,
    version_numbers,
)

ADAPTER_WEIGHTS = "adapter_model.safetensors"


class Busy(Exception):
    """Another deploy or operator holds the model's lock: try again later."""


class SpecRefused(UserError):
    """The spec cannot be served as declared; `reason` goes into the Degraded condition."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    version: int
    revision: str
    adapters: tuple[str, ...]
    manifest: dict
    written: bool = False


@contextlib.contextmanager
def model_lock(spec: ModelSpec):
    """The deploy lock of the model (shared with `taskloom deploy`); Busy when someone else holds it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(deploy_lock(Path(spec.repository), spec.model))
        except UserError as e:
            raise Busy(str(e)) from None
        yield


def check_adapters(spec: ModelSpec, dim: int) -> dict[str, Path]:
    """Each declared adapter: its weights' sha256 equals the declared one, then taskloom's own checks."""
    out = {}
    for a in spec.adapters:
        path = Path(a.path)
        weights = path / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise SpecRefused("AdapterMissing", f"adapter {a.name}: {weights}: no such file")
        actual = sha256_file(weights)
        if actual != a.sha256:
            raise SpecRefused(
                "AdapterDigestMismatch",
                f"adapter {a.name}: {weights} has sha256 {actual}, the spec declares {a.sha256}: refused",
            )
        try:
            check_adapter(path, name=a.name, dim=dim)
        except UserError as e:
            raise SpecRefused("AdapterInvalid", f"adapter {a.name}: {e}") from None
        out[a.name] = path
    return out


def matches(manifest: dict, base: dict, spec: ModelSpec) -> bool:
    """`manifest` serves the base's weights and head with exactly the spec's adapters and digests."""
    files, base_files = manifest.get("files") or {}, base.get("files") or {}
    for key, digest in base_files.items():
        if key.startswith(("weights/", "head/")) and files.get(key) != digest:
            return False
    if (manifest.get("serving") or {}).get("precision", "fp32") != spec.precision:
        return False
    if set(manifest.get("adapters") or {}) != set(spec.adapter_digests):
        return False
    return all(files.get(f"adapters/{n}/{ADAPTER_WEIGHTS}") == d for n, d in spec.adapter_digests.items())


def base_version(spec: ModelSpec) -> tuple[Path, int]:
    folder = Path(spec.repository) / spec.model
    versions = version_numbers(folder)
    if not versions:
        raise SpecRefused("ModelMissing", f"{folder}: no version folders (export the model first)")
    if spec.version is not None and spec.version not in versions:
        raise SpecRefused("VersionMissing", f"spec.model.version {spec.version}: no such folder in {folder}")
    return folder, spec.version if spec.version is not None else versions[-1]


def _target(version: int, manifest: dict, written: bool = False) -> Target:
    return Target(version, manifest["revision"], tuple(sorted(manifest.get("adapters") or {})), manifest, written)


def find(spec: ModelSpec) -> Target | None:
    """An existing version serving the spec (the base first, then the newest), or None."""
    folder, base = base_version(spec)
    try:
        base_manifest = read_manifest(folder / str(base))
    except UserError as e:
        raise SpecRefused("ModelInvalid", str(e)) from None
    for v in [base, *reversed(version_numbers(folder))]:
        try:
            manifest = base_manifest if v == base else read_manifest(folder / str(v))
        except UserError:
            continue  # a half-written or foreign folder is never served
        if matches(manifest, base_manifest, spec):
            return _target(v, manifest)
    return None


def resolve(spec: ModelSpec) -> Target:
    """The version serving the spec, written (checked first) when the repository has none. Busy when locked."""
    found = find(spec)
    if found is not None:
        return found
    folder, base = base_version(spec)
    base_manifest = read_manifest(folder / str(base))
    adapters = check_adapters(spec, base_manifest["dim"])
    with model_lock(spec):
        found = find(spec)  # another operator may have written it while we checked
        if found is not None:
            return found
        options = serving_options(
            **{**(base_manifest.get("serving") or {}), "precision": spec.precision, "engine": spec.engine}
        )
        base_dir = folder / str(base)
        try:
            version, manifest = write_next_version(
                Path(spec.repository),
                spec.model,
                base_dir / "weights",
                head_dir=base_dir / "head" if base_manifest.get("labels") else None,
                head_task=base_manifest.get("head_task"),
                adapters=adapters,
                options=options,
            )
        except UserError as e:
            raise SpecRefused("VersionInvalid", str(e)) from None
        record_candidate(folder, read_state(folder), version, manifest, "operator-write", base)
        return _target(version, manifest, written=True)


def record(spec: ModelSpec, version: int, status: str, previous: int | None, reason: str | None = None) -> None:
    """versions.json follows what the operator serves, as `taskloom deploy` keeps it."""
    folder = Path(spec.repository) / spec.model
    state = read_state(folder)
    if state.get("serving") == version and status == "serving":
        return
    serving = version if status == "serving" else state.get("serving")
    manifest = read_manifest(folder / str(version))
    record_outcome(folder, state, version, manifest, status, reason, previous, serving, "operator")
