"""The alarm policy: when a run of drift tests is worth a retrain.

One p-value per task per window is not a decision. Per window (all tasks share its boundaries):

1. Benjamini-Hochberg across the tasks tested in the window: task t is significant when its
   q-value <= alpha, so among the tasks flagged in a window the expected share of false flags is
   at most alpha, however many tasks are watched.
2. A window is a *hit* for t when it is significant AND its effect size >= `min_effect`: with big
   windows a harmless, tiny shift is significant too.
3. An alarm after `consecutive` hits in a row (default 2); a window that is not a hit, or that had
   too few requests to test, breaks the run. Independent windows under no drift give a false
   alarm with probability about alpha^K per window instead of alpha.
4. After an alarm, `cooldown` windows of that task raise nothing (the retrain is under way; its
   new reference arrives in the feature store).

Each alarm carries an idempotency key, sha256 of (task, reference adapter id, start of the first
window of the run). The same drift, seen again by a restarted or retried monitor, gets the same key;
the key is the CloudEvent id, and a receiver that has seen the id does not start a second retrain.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from taskloom.errors import UserError
from taskloom.monitor.multitest import bh_adjust
from taskloom.monitor.windows import iso


def idempotency_key(task: str, adapter_id: str, first_window_start: float) -> str:
    """sha256 hex of task, adapter id and the first window's start (ISO UTC), newline-separated."""
    return hashlib.sha256(f"{task}\n{adapter_id}\n{iso(first_window_start)}".encode()).hexdigest()


@dataclass(frozen=True)
class AlarmPolicy:
    alpha: float = 0.05  # BH level across the tasks of one window
    consecutive: int = 2  # hits in a row before an alarm (K)
    min_effect: float = 0.0  # smallest effect size that counts as a hit
    cooldown: int = 3  # windows without alarms for a task after its alarm (N)

    def __post_init__(self):
        if not (isinstance(self.alpha, (int, float)) and 0.0 < self.alpha < 1.0):
            raise UserError(f"alpha must lie strictly between 0 and 1, got {self.alpha}")
        if isinstance(self.consecutive, bool) or not isinstance(self.consecutive, int) or self.consecutive < 1:
            raise UserError(f"consecutive windows must be an integer >= 1, got {self.consecutive}")
        if not (isinstance(self.min_effect, (int, float)) and self.min_effect >= 0.0):
            raise UserError(f"min effect must be a number >= 0, got {self.min_effect}")
        if isinstance(self.cooldown, bool) or not isinstance(self.cooldown, int) or self.cooldown < 0:
            raise UserError(f"cooldown must be an integer >= 0 windows, got {self.cooldown}")


@dataclass
class TaskState:
    run: list[dict] = field(default_factory=list)  # the hits in a row so far: [{"start", "p_value", "effect"}]
    cooldown_left: int = 0
    adapter_id: str | None = None


class AlarmTracker:
    """Apply an AlarmPolicy window after window; keeps per-task state (run of hits, cooldown)."""

    def __init__(self, policy: AlarmPolicy):
        self.policy = policy
        self.state: dict[str, TaskState] = {}

    def step(self, start: float, results: dict[str, dict | None]) -> tuple[dict[str, dict], list[dict]]:
        """One window: results[task] = {"p_value", "effect", "adapter_id"}, or None when the window
        could not be tested (too few requests). Returns (decision per task, alarms raised)."""
        pol = self.policy
        tested = {t: r for t, r in sorted(results.items()) if r is not None}
        q = dict(zip(tested, bh_adjust([r["p_value"] for r in tested.values()]).tolist()))
        decisions, alarms = {}, []
        for task in sorted(results):
            st = self.state.setdefault(task, TaskState())
            r = results[task]
            if r is not None and st.adapter_id is not None and r["adapter_id"] != st.adapter_id:
                st.run = []  # a new reference (after a retrain): earlier hits were against the old one
            if r is not None:
                st.adapter_id = r["adapter_id"]
            d = {
                "q_value": q.get(task),
                "significant": False,
                "hit": False,
                "cooldown": st.cooldown_left > 0,
                "alarm": None,
            }
            if st.cooldown_left > 0:
                st.cooldown_left -= 1
                st.run = []
            elif r is None:
                st.run = []
            else:
                d["significant"] = q[task] <= pol.alpha
                d["hit"] = d["significant"] and r["effect"] >= pol.min_effect
                if d["hit"]:
                    st.run.append({"start": start, "p_value": r["p_value"], "effect": r["effect"]})
                else:
                    st.run = []
                if len(st.run) >= pol.consecutive:
                    first = st.run[0]["start"]
                    alarm = {
                        "key": idempotency_key(task, r["adapter_id"], first),
                        "task": task,
                        "adapter_id": r["adapter_id"],
                        "first_window_start": iso(first),
                        "window_start": iso(start),
                        "windows": [iso(h["start"]) for h in st.run],
                        "p_values": [h["p_value"] for h in st.run],
                        "q_value": q[task],
                        "effect": r["effect"],
                    }
                    alarms.append(alarm)
                    d["alarm"] = alarm["key"]
                    d["streak"] = len(st.run)
                    st.run = []
                    st.cooldown_left = pol.cooldown
            d.setdefault("streak", len(st.run))
            decisions[task] = d
        return decisions, alarms
