"""Status and endpoints from pod reports, without a cluster."""

from __future__ import annotations

from taskloom.operator.pods import PodReport, pending_pods, ready_endpoints, served
from taskloom.operator.status import Problem, compute_status, differs


def _status(reports, pending=(), want=1, problem=None, previous=None, version=2, revision="r2", rolling=None):
    return compute_status(
        generation=5,
        version=version,
        revision=revision,
        want=want,
        pending=list(pending),
        reports=reports,
        adapters_of={2: ["senti"], 1: []},
        problem=problem,
        last_rollback=None,
        previous=previous or {},
        now="2026-01-01T00:00:00Z",
        rolling=rolling,
    )


def cond(status, kind):
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_ready_only_when_every_pod_serves_the_version_and_revision():
    ok = PodReport("p1", "http://10.0.0.1:8000", 2, "r2")
    s = _status([ok])
    assert cond(s, "Ready")["status"] == "True" and cond(s, "Progressing")["status"] == "False"
    assert s["liveVersion"] == "2" and s["adaptersLoaded"] == ["senti"] and s["readyReplicas"] == 1
    assert s["observedGeneration"] == 5
    wrong_rev = PodReport("p2", "http://10.0.0.2:8000", 2, "other")
    s = _status([ok, wrong_rev], want=2)
    assert cond(s, "Ready")["status"] == "False" and cond(s, "Ready")["reason"] == "Converging"
    assert "p2" in cond(s, "Ready")["message"] and s["readyReplicas"] == 1
    old = PodReport("p2", "http://10.0.0.2:8000", 1, "r1")
    assert _status([ok, old], want=2)["liveVersion"] == "1,2"


def test_pending_pod_or_too_few_replicas_is_not_ready():
    ok = PodReport("p1", "http://10.0.0.1:8000", 2, "r2")
    s = _status([ok], pending=["p2"], want=2)
    assert cond(s, "Ready")["reason"] == "PodsPending" and cond(s, "Progressing")["status"] == "True"
    assert cond(_status([ok], want=2), "Ready")["reason"] == "WaitingForPods"


def test_not_ready_while_the_deployment_rolls_out_even_when_every_ready_pod_serves():
    ok = PodReport("p1", "http://10.0.0.1:8000", 2, "r2")
    s = _status([ok], rolling="Deployment rt: 0 of 1 pods updated, 1 old left")
    assert cond(s, "Ready")["status"] == "False" and cond(s, "Ready")["reason"] == "RollingOut"
    assert "1 old left" in cond(s, "Ready")["message"] and cond(s, "Progressing")["status"] == "True"


def test_problem_is_degraded_with_its_reason_and_transition_times_kept():
    p = Problem("AdapterDigestMismatch", "adapter senti: sha256 differs")
    s = _status([PodReport("p1", "u", 1, "r1")], problem=p)
    assert cond(s, "Degraded")["status"] == "True" and cond(s, "Degraded")["reason"] == "AdapterDigestMismatch"
    assert cond(s, "Ready")["status"] == "False" and cond(s, "Progressing")["status"] == "False"
    assert s["liveVersion"] == "1"
    later = compute_status(
        generation=5,
        version=2,
        revision="r2",
        want=1,
        pending=[],
        reports=[PodReport("p1", "u", 1, "r1")],
        adapters_of={},
        problem=p,
        last_rollback=None,
        previous=s,
        now="2030-01-01T00:00:00Z",
    )
    assert cond(later, "Degraded")["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_differs_ignores_timestamps_only():
    ok = PodReport("p1", "u", 2, "r2")
    a = _status([ok])
    b = compute_status(
        generation=5,
        version=2,
        revision="r2",
        want=1,
        pending=[],
        reports=[ok],
        adapters_of={2: ["senti"]},
        problem=None,
        last_rollback=None,
        previous={},
        now="2031-01-01T00:00:00Z",
    )
    assert not differs(a, b)
    assert differs(a, _status([ok], want=2))


def test_endpoints_from_v1_and_v1beta1_slices():
    slices = [
        {
            "ports": [{"name": "http", "port": 8000}, {"name": "grpc", "port": 8001}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"name": "p1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}, "targetRef": {"name": "p2"}},
                {"addresses": ["10.0.0.3"], "targetRef": {"name": "p3"}},
            ],
        },
        {"ports": None, "endpoints": [{"addresses": ["10.0.0.9"]}]},
    ]
    eps = ready_endpoints(slices)
    assert [(e.pod, e.url) for e in eps] == [("p1", "http://10.0.0.1:8000"), ("p3", "http://10.0.0.3:8000")]


def test_pending_pods_and_served_version():
    running = {
        "metadata": {"name": "a"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    pending = {"metadata": {"name": "b"}, "status": {"phase": "Pending"}}
    going = {"metadata": {"name": "c", "deletionTimestamp": "x"}, "status": {"phase": "Pending"}}
    assert pending_pods([running, pending, going]) == ["b"]
    index = [
        {"name": "m.candidate", "version": "3", "state": "READY"},
        {"name": "m", "version": "2", "state": "READY"},
        {"name": "other", "version": "1", "state": "READY"},
    ]
    assert served(index, "m") == 2 and served([{"name": "m", "state": "UNAVAILABLE"}], "m") is None
