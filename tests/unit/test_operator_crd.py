"""The CRD the operator ships and keeps current: the chart's file byte for byte, and what it does with a live one."""

from __future__ import annotations

import copy
from pathlib import Path

import tomllib
import yaml

from taskloom.operator.crd import CRD_FILE, REVISION, covers, plan, revision, shipped

REPO = Path(__file__).resolve().parents[2]
CHART_CRD = REPO / "charts" / "taskloom" / "crds" / "modeldeployments.taskloom.dev.yaml"
OLD_CRD = REPO / "tests" / "data" / "crds" / "modeldeployments.taskloom.dev-rev1.yaml"


def live_of(crd: dict, resource_version: str = "7") -> dict:
    """As the API server returns it: defaults of its own added, metadata filled in, a status."""
    live = copy.deepcopy(crd)
    live["metadata"].update(resourceVersion=resource_version, uid="u1", generation=3)
    live["spec"]["conversion"] = {"strategy": "None"}
    for v in live["spec"]["versions"]:
        for col in v.get("additionalPrinterColumns", []):
            col.setdefault("priority", 0)
    live["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    return live


def test_the_shipped_copy_is_the_charts_file_byte_for_byte_and_package_data():
    assert CRD_FILE.read_bytes() == CHART_CRD.read_bytes()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert CRD_FILE.name in data["taskloom.operator"]


def test_revision_orders_copies():
    crd = shipped()
    assert revision(crd) >= 2
    assert revision(yaml.safe_load(OLD_CRD.read_text())) == 0
    assert revision({"metadata": {"annotations": {REVISION: "x1"}}}) == 0


def test_absent_is_created_older_is_updated_newer_is_left():
    want = shipped()
    assert plan(None, want) == "create"
    old = live_of(yaml.safe_load(OLD_CRD.read_text()))
    assert (
        "autoscaling" not in old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    )
    assert plan(old, want) == "update"
    newer = live_of(want)
    newer["metadata"]["annotations"][REVISION] = str(revision(want) + 1)
    del newer["spec"]["versions"][0]["additionalPrinterColumns"]  # whatever a newer copy changed
    assert plan(newer, want) == "newer"


def test_current_with_server_defaults_is_kept_but_a_hand_edit_is_repaired():
    want = shipped()
    live = live_of(want)
    assert plan(live, want) == "keep"
    edited = copy.deepcopy(live)
    edited["spec"]["versions"][0]["additionalPrinterColumns"].pop()
    assert plan(edited, want) == "update"


def test_covers_is_a_subset_check_with_exact_lists():
    assert covers({"a": 1, "b": [{"x": 1, "y": 2}]}, {"b": [{"x": 1}]})
    assert not covers({"b": [{"x": 1}, {"x": 2}]}, {"b": [{"x": 1}]})
    assert not covers({"a": "1"}, {"a": 1})
    assert not covers({}, {"a": None})
