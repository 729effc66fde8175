"""The alarm policy: BH across tasks, K hits in a row with a minimum effect, cooldown, idempotency keys."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from taskloom.errors import UserError
from taskloom.monitor.policy import AlarmPolicy, AlarmTracker, idempotency_key

W = 300.0  # window length
T0 = 1_700_000_100.0  # a multiple of W


def r(p, effect=0.2, adapter="a1"):
    return {"p_value": p, "effect": effect, "adapter_id": adapter}


def run(tracker, windows):
    """Feed windows (dicts task → result) in order; [(window index, alarm)]."""
    out = []
    for i, results in enumerate(windows):
        _, alarms = tracker.step(T0 + i * W, results)
        out += [(i, a) for a in alarms]
    return out


def test_key_is_sha256_of_task_adapter_and_first_window():
    key = idempotency_key("rt-sentiment", "a1", T0)
    assert key == hashlib.sha256(b"rt-sentiment\na1\n2023-11-14T22:15:00Z").hexdigest()
    assert key != idempotency_key("rt-sentiment", "a2", T0) != idempotency_key("rt-sentiment", "a1", T0 + W)


def test_alarm_only_after_k_consecutive_hits():
    tracker = AlarmTracker(AlarmPolicy(consecutive=2, cooldown=0))
    alarms = run(tracker, [{"t": r(0.01)}, {"t": r(0.5)}, {"t": r(0.01)}, {"t": r(0.02)}, {"t": r(0.03)}])
    assert [i for i, _ in alarms] == [3]
    a = alarms[0][1]
    assert a["windows"] == ["2023-11-14T22:25:00Z", "2023-11-14T22:30:00Z"]
    assert a["first_window_start"] == "2023-11-14T22:25:00Z" and a["p_values"] == [0.01, 0.02]
    assert a["key"] == idempotency_key("t", "a1", T0 + 2 * W)
    # the run restarts after an alarm: window 4 alone is one hit, not a second alarm
    assert tracker.state["t"].run and len(tracker.state["t"].run) == 1


def test_k3_needs_three_and_a_too_small_window_breaks_the_run():
    tracker = AlarmTracker(AlarmPolicy(consecutive=3, cooldown=0))
    assert run(tracker, [{"t": r(0.01)}, {"t": r(0.01)}, {"t": None}, {"t": r(0.01)}, {"t": r(0.01)}]) == []
    _, alarms = tracker.step(T0 + 5 * W, {"t": r(0.01)})
    assert len(alarms) == 1 and len(alarms[0]["windows"]) == 3


def test_small_effect_is_no_hit_even_when_significant():
    tracker = AlarmTracker(AlarmPolicy(min_effect=0.05, cooldown=0))
    decisions, _ = tracker.step(T0, {"t": r(0.001, effect=0.049)})
    assert decisions["t"]["significant"] is True and decisions["t"]["hit"] is False
    assert run(tracker, [{"t": r(0.001, effect=0.049)}] * 4) == []
    assert len(run(AlarmTracker(AlarmPolicy(min_effect=0.05)), [{"t": r(0.001, effect=0.05)}] * 2)) == 1


def test_benjamini_hochberg_across_the_tasks_of_a_window():
    # p = .01 .02 .03 .04 .2 over five tasks: q = .04 (×4 tasks at BH's step-up) and .2 → four significant
    ps = {"a": 0.01, "b": 0.02, "c": 0.03, "d": 0.04, "e": 0.2}
    decisions, _ = AlarmTracker(AlarmPolicy()).step(T0, {t: r(p) for t, p in ps.items()})
    assert {t: d["significant"] for t, d in decisions.items()} == {"a": True, "b": True, "c": True, "d": True, "e": False}
    assert decisions["d"]["q_value"] == pytest.approx(0.05)
    # one task at p = .03 is significant alone, but not among nine tasks at p = .5
    alone, _ = AlarmTracker(AlarmPolicy()).step(T0, {"a": r(0.03)})
    crowd, _ = AlarmTracker(AlarmPolicy()).step(T0, {"a": r(0.03), **{f"x{i}": r(0.5) for i in range(9)}})
    assert alone["a"]["significant"] is True and crowd["a"]["significant"] is False
    assert crowd["a"]["q_value"] == pytest.approx(0.3)
    # an untested task does not count in the correction
    d, _ = AlarmTracker(AlarmPolicy()).step(T0, {"a": r(0.03), "b": None})
    assert d["a"]["q_value"] == pytest.approx(0.03) and d["b"]["q_value"] is None


def test_cooldown_silences_n_windows_then_a_new_run_can_alarm():
    tracker = AlarmTracker(AlarmPolicy(consecutive=2, cooldown=3))
    alarms = run(tracker, [{"t": r(0.01)}] * 9)
    # alarm at window 1; windows 2-4 cool down; hits 5, 6 → alarm at 6; 7-8 cool down
    assert [i for i, _ in alarms] == [1, 6]
    assert alarms[0][1]["key"] != alarms[1][1]["key"]
    other = AlarmTracker(AlarmPolicy(consecutive=2, cooldown=3))
    d, _ = other.step(T0, {"t": r(0.01), "u": r(0.01)})
    d, a = other.step(T0 + W, {"t": r(0.01), "u": r(0.9)})
    assert [x["task"] for x in a] == ["t"] and d["t"]["alarm"] == a[0]["key"] and d["u"]["alarm"] is None
    d, _ = other.step(T0 + 2 * W, {"t": r(0.01), "u": r(0.01)})
    assert d["t"]["cooldown"] is True and d["t"]["hit"] is False and d["u"]["hit"] is True  # per task


def test_a_new_reference_restarts_the_run():
    tracker = AlarmTracker(AlarmPolicy(consecutive=2))
    alarms = run(tracker, [{"t": r(0.01, adapter="a1")}, {"t": r(0.01, adapter="a2")}, {"t": r(0.01, adapter="a2")}])
    assert [i for i, _ in alarms] == [2] and alarms[0][1]["adapter_id"] == "a2"


def test_the_same_stream_gives_the_same_keys():
    rng = np.random.default_rng(0)
    stream = [{t: r(float(p)) for t, p in zip("abc", rng.uniform(0, 0.06, 3))} for _ in range(12)]
    keys = [[a["key"] for _, a in run(AlarmTracker(AlarmPolicy()), stream)] for _ in range(2)]
    assert keys[0] and keys[0] == keys[1]


def test_no_drift_false_alarm_rate_is_far_below_alpha():
    rng = np.random.default_rng(1)
    tracker = AlarmTracker(AlarmPolicy(consecutive=2, cooldown=0))
    stream = [{t: r(float(p)) for t, p in zip("abcd", rng.uniform(size=4))} for _ in range(2000)]
    n = len(run(tracker, stream))
    # per task and window about alpha² ≤ .0025 (BH only lowers it): 8000 task-windows → ~20 at most on average
    assert n <= 35


@pytest.mark.parametrize("kwargs, needle", [
    ({"alpha": 0}, "alpha must lie strictly between 0 and 1"),
    ({"consecutive": 0}, "consecutive windows must be an integer >= 1"),
    ({"min_effect": -0.1}, "min effect must be a number >= 0"),
    ({"cooldown": -1}, "cooldown must be an integer >= 0"),
])
def test_bad_policy_is_a_user_error(kwargs, needle):
    with pytest.raises(UserError, match=needle):
        AlarmPolicy(**kwargs)
