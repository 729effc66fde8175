"""The promotion gate: every task must keep `share` of its single-adapter gain over the base."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskloom.errors import UserError
from taskloom.merge.gate import gate

BASE = {"sent": 0.50, "topic": 0.40, "sim": 0.65}
SINGLE = {"sent": 0.80, "topic": 0.90, "sim": 0.75}


def test_promotes_when_every_task_keeps_its_share():
    r = gate(BASE, SINGLE, {"sent": 0.78, "topic": 0.86, "sim": 0.74})
    assert r["promote"] and r["failed"] == []
    assert r["tasks"]["sent"]["kept_share"] == pytest.approx(0.28 / 0.30)
    assert r["tasks"]["topic"] == pytest.approx({"base": 0.4, "single": 0.9, "merged": 0.86, "gain": 0.5,
                                                 "kept_share": 0.92, "ok": True})


def test_names_the_task_that_lost_its_gain():
    r = gate(BASE, SINGLE, {"sent": 0.78, "topic": 0.80, "sim": 0.74})
    assert not r["promote"] and r["failed"] == ["topic"]
    assert r["tasks"]["topic"]["kept_share"] == pytest.approx(0.8) and not r["tasks"]["topic"]["ok"]


def test_exactly_the_share_passes_and_share_is_configurable():
    merged = {"sent": 0.77, "topic": 0.85, "sim": 0.74}  # sent keeps 0.27/0.30 = 0.9 exactly
    assert gate(BASE, SINGLE, merged)["promote"]
    assert gate(BASE, SINGLE, merged, share=0.95)["failed"] == ["sent", "topic", "sim"]
    assert gate(BASE, SINGLE, {**merged, "sim": 0.75}, share=0.95)["failed"] == ["sent", "topic"]
    assert gate(BASE, SINGLE, {"sent": 0.5, "topic": 0.4, "sim": 0.65}, share=0.0)["promote"]


def test_a_task_whose_adapter_gained_nothing_must_not_fall_below_it():
    base, single = {"t": 0.70}, {"t": 0.68}  # the adapter hurt: no gain to keep
    assert gate(base, single, {"t": 0.675})["promote"]  # within the tolerance of the single adapter
    r = gate(base, single, {"t": 0.66})
    assert r["failed"] == ["t"] and r["tasks"]["t"]["kept_share"] is None
    assert gate(base, single, {"t": 0.66}, tolerance=0.05)["promote"]


def test_nan_fails_the_task():
    assert gate({"t": 0.5}, {"t": 0.8}, {"t": math.nan})["failed"] == ["t"]


@pytest.mark.parametrize(
    "args,msg",
    [((BASE, SINGLE, {"sent": 0.8}), "no merged score"), (({}, SINGLE, SINGLE), "no base score"),
     ((BASE, {}, BASE), "no tasks"), ((BASE, SINGLE, SINGLE, -0.1), "share"), ((BASE, SINGLE, SINGLE, math.nan), "share")],
)
def test_bad_calls(args, msg):
    with pytest.raises(UserError, match=msg):
        gate(*args)


scores = st.floats(0, 1, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(b=scores, s=scores, m=scores, share=st.floats(0, 1))
def test_gate_matches_its_definition(b, s, m, share):
    r = gate({"t": b}, {"t": s}, {"t": m}, share=share)
    ok = (m - b >= share * (s - b) - 1e-12) if s > b else (m >= s - 0.01 - 1e-12)
    assert r["promote"] == ok == r["tasks"]["t"]["ok"]
    # a merged model at least as good as the single adapter always passes
    assert gate({"t": b}, {"t": s}, {"t": max(m, s)}, share=share)["promote"]
