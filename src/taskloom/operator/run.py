"""Run the operator in this process against the current kubeconfig (or the pod's ServiceAccount)."""

from __future__ import annotations

import asyncio


def run_operator(namespace: str | None = None, liveness: str | None = None) -> None:
    """As `kopf run` does: one namespace, or every namespace when `namespace` is None."""
    import kopf

    from taskloom.operator import handlers  # noqa: F401 (registers the handlers)

    kopf.configure(verbose=False)
    asyncio.run(
        kopf.operator(
            standalone=True,
            namespaces=[namespace] if namespace else [],
            clusterwide=namespace is None,
            liveness_endpoint=liveness,
        )
    )
