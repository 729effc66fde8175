"""A small REST client over the kubernetes package's ApiClient: raw paths, dicts in and out.

Group versions differ between servers (PodDisruptionBudget and EndpointSlice are v1 from Kubernetes 1.21,
v1beta1 before), so the operator asks the server which one it serves and builds paths itself.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


class Forbidden(Exception):
    pass


def load_api_client() -> Any:
    """In a pod: its ServiceAccount; outside: the current kubeconfig context (as kubectl)."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api_client: Any | None = None):
        self.api = api_client if api_client is not None else load_api_client()
        self._served: dict[str, set[str]] = {}

    def _call(
        self, method: str, path: str, body: Any = None, query: list | None = None, content_type: str | None = None
    ):
        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            resp = self.api.call_api(
                path,
                method,
                query_params=query or [],
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=30,
            )
        except ApiException as e:
            if e.status == 404:
                raise NotFound(path) from None
            if e.status == 409:
                raise Conflict(path) from None
            if e.status == 403:
                raise Forbidden(path) from None
            raise
        data = resp.data
        return json.loads(data) if data else {}

    def get(self, path: str) -> dict:
        return self._call("GET", path)

    def list(self, path: str, label_selector: str | None = None) -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        return self._call("GET", path, query=query).get("items", [])

    def create(self, path: str, body: dict) -> dict:
        return self._call("POST", path, body=body)

    def replace(self, path: str, body: dict) -> dict:
        """PUT: the RBAC verb `update`; `body` carries the resourceVersion it replaces (else Conflict)."""
        return self._call("PUT", path, body=body)

    def merge_patch(self, path: str, body: dict) -> dict:
        return self._call("PATCH", path, body=body, content_type="application/merge-patch+json")

    def delete(self, path: str) -> None:
        with contextlib.suppress(NotFound):
            self._call("DELETE", path, body={"propagationPolicy": "Background"})

    def preferred(self, group: str, versions: tuple[str, ...]) -> str:
        """The first of `versions` that the server serves for `group` ("policy/v1" ...), asked once."""
        if group not in self._served:
            self._served[group] = {v["version"] for v in self.get(f"/apis/{group}").get("versions", [])}
        served = self._served[group]
        for v in versions:
            if v in served:
                return f"{group}/{v}"
        raise NotFound(f"/apis/{group}: none of {versions} served (serves {sorted(served)})")


def collection(api_version: str, namespace: str, plural: str) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}"
