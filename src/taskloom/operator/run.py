"""Run the operator in this process against the current kubeconfig (or the pod's ServiceAccount)."""

from __future__ import annotations

import asyncio

from taskloom.operator.crd import ensure_crd
from taskloom.operator.kube import Kube


def run_operator(namespace: str | None = None, liveness: str | None = None) -> None:
    """As `kopf run` does: one namespace, or every namespace when `namespace` is None. The CRD is made
    current first (Helm never upgrades crds/), before anything watches it."""
    import kopf

    from taskloom.operator import handlers  # noqa: F401 (registers the handlers)

    kopf.configure(verbose=False)
    ensure_crd(Kube())
    asyncio.run(
        kopf.operator(
            standalone=True,
            namespaces=[namespace] if namespace else [],
            clusterwide=namespace is None,
            liveness_endpoint=liveness,
        )
    )
