"""A ModelDeployment's spec as a typed value, checked beyond what the CRD's schema can say."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from taskloom.errors import UserError
from taskloom.serve.adapters import check_name

GROUP = "taskloom.dev"
VERSION = "v1alpha1"
PLURAL = "modeldeployments"
KIND = "ModelDeployment"


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: str
    sha256: str


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int
    max_replicas: int
    target_cpu: int


@dataclass(frozen=True)
class ModelSpec:
    """What one ModelDeployment asks for (defaults as the CRD's schema sets them)."""

    model: str
    repository: str
    version: int | None = None
    adapters: tuple[AdapterSpec, ...] = ()
    replicas: int = 1
    gpus: int = 0
    sharing: str = "none"
    mig_profile: str | None = None
    engine: str = "auto"
    precision: str = "fp32"
    canary: bool = True
    rollback: bool = True
    smoke_texts: tuple[str, ...] = ()
    autoscaling: Autoscaling | None = None

    @property
    def adapter_digests(self) -> dict[str, str]:
        return {a.name: a.sha256 for a in self.adapters}


def parse_spec(spec: dict) -> ModelSpec:
    """The spec of a ModelDeployment; UserError naming the field for what the schema lets through."""
    model = spec.get("model") or {}
    name = check_name(str(model.get("name", "")), "spec.model.name")
    repo = model.get("repository")
    if not repo or not PurePosixPath(repo).is_absolute():
        raise UserError("spec.model.repository: an absolute path to a Triton model repository is required")
    version = model.get("version")
    if version not in (None, "") and not str(version).isdigit():
        raise UserError(f"spec.model.version {version!r}: a version folder number")
    adapters = []
    seen: set[str] = set()
    for i, a in enumerate(spec.get("adapters") or []):
        a_name = check_name(str(a.get("name", "")), f"spec.adapters[{i}].name")
        if a_name in seen:
            raise UserError(f"spec.adapters[{i}].name {a_name!r}: declared twice")
        seen.add(a_name)
        adapters.append(AdapterSpec(a_name, str(a.get("path", "")), str(a.get("sha256", "")).lower()))
    sharing = (spec.get("gpuSharing") or {}).get("mode", "none")
    mig = (spec.get("gpuSharing") or {}).get("migProfile")
    if sharing == "mig" and not mig:
        raise UserError("spec.gpuSharing.migProfile: required with mode mig (e.g. 1g.10gb)")
    rollout = spec.get("rollout") or {}
    hpa = spec.get("autoscaling") or {}
    autoscaling = None
    if hpa.get("enabled"):
        lo = int(hpa.get("minReplicas", spec.get("replicas", 1) or 1))
        hi = int(hpa.get("maxReplicas", max(lo, 1)))
        if not 1 <= lo <= hi:
            raise UserError(f"spec.autoscaling: minReplicas {lo} and maxReplicas {hi} need 1 <= min <= max")
        autoscaling = Autoscaling(lo, hi, int(hpa.get("targetCPUUtilizationPercentage", 80)))
    return ModelSpec(
        model=name,
        repository=str(repo),
        version=int(version) if version not in (None, "") else None,
        adapters=tuple(adapters),
        replicas=int(spec.get("replicas", 1)),
        gpus=int(spec.get("gpusPerReplica", 0)),
        sharing=sharing,
        mig_profile=mig,
        engine=spec.get("engine", "auto"),
        precision=spec.get("precision", "fp32"),
        canary=bool(rollout.get("canary", True)),
        rollback=bool(rollout.get("rollbackOnFailure", True)),
        smoke_texts=tuple(rollout.get("smokeTexts") or ()),
        autoscaling=autoscaling,
    )
