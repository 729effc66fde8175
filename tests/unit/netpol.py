"""Kubernetes NetworkPolicy semantics, evaluated offline.

The test API server enforces no policies, so the reachability tests ask this evaluator instead. It follows
networking.k8s.io/v1: a pod no policy selects (for a direction) is open in that direction; policies that
select it are a union of allows; a connection needs the source's egress and the destination's ingress.
Peers are podSelector (the policy's namespace), namespaceSelector, both (AND) or ipBlock (any endpoint's
IP, with `except`); ports by number, range (endPort) or container port name, protocol TCP by default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace set) or an address outside the cluster (namespace None)."""

    name: str
    ip: str
    namespace: str | None = None
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    ports: dict[str, int] = field(default_factory=dict, hash=False, compare=False)  # container port name -> number

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions ANDed; {} selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown selector operator {op}")
    return True


def policy_types(policy: dict) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress", "Egress"} if "egress" in spec else {"Ingress"}


class Cluster:
    def __init__(self, policies: list[dict], namespaces: dict[str, dict[str, str]]):
        self.policies = policies
        # every namespace carries kubernetes.io/metadata.name, as the API server sets it
        self.namespaces = {ns: {"kubernetes.io/metadata.name": ns, **labels} for ns, labels in namespaces.items()}

    def _selecting(self, pod: Endpoint, direction: str) -> list[dict]:
        if not pod.is_pod:
            return []
        return [
            p
            for p in self.policies
            if p["metadata"].get("namespace", "default") == pod.namespace
            and direction in policy_types(p)
            and selects(p["spec"].get("podSelector"), pod.labels)
        ]

    def _peer_matches(self, peer: dict, other: Endpoint, policy_ns: str) -> bool:
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            ip = ipaddress.ip_address(other.ip)
            if ip not in ipaddress.ip_network(block["cidr"]):
                return False
            return not any(ip in ipaddress.ip_network(e) for e in block.get("except") or [])
        if not other.is_pod:
            return False
        if "namespaceSelector" in peer:
            ns_labels = self.namespaces.get(other.namespace or "", {})
            if not selects(peer["namespaceSelector"], ns_labels):
                return False
        elif other.namespace != policy_ns:
            return False
        return "podSelector" not in peer or selects(peer["podSelector"], other.labels)

    @staticmethod
    def _port_matches(ports: list[dict] | None, dst: Endpoint, port: int, protocol: str) -> bool:
        if not ports:
            return True
        for entry in ports:
            if entry.get("protocol", "TCP") != protocol:
                continue
            want = entry.get("port")
            if want is None:
                return True
            if isinstance(want, str):
                want = dst.ports.get(want)  # a name resolves against the destination pod's container ports
                if want is None:
                    continue
            if want == port or (entry.get("endPort") is not None and want <= port <= entry["endPort"]):
                return True
        return False

    def _direction_allows(
        self, pod: Endpoint, other: Endpoint, dst: Endpoint, port: int, protocol: str, direction: str
    ) -> bool:
        policies = self._selecting(pod, direction)
        if not policies:
            return True
        key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in policies:
            ns = policy["metadata"].get("namespace", "default")
            for rule in policy["spec"].get(key) or []:
                peers = rule.get(peers_key)
                if peers and not any(self._peer_matches(peer, other, ns) for peer in peers):
                    continue
                if self._port_matches(rule.get("ports"), dst, port, protocol):
                    return True
        return False

    def allowed(self, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
        """Whether a new connection from src to dst:port/protocol gets through both ends' policies."""
        return self._direction_allows(src, dst, dst, port, protocol, "Egress") and self._direction_allows(
            dst, src, dst, port, protocol, "Ingress"
        )
