"""The promotion gate: a merged model replaces the served one only if every task keeps most of what
its own adapter gained over the base.

For a task with gain g = single − base > 0, it keeps kept_share = (merged − base) / g and passes when
kept_share ≥ share (default 0.9). For a task whose adapter gained nothing (g ≤ 0) there is no gain to
keep; the merged model passes if it is no worse than that adapter, up to `tolerance` (absolute, in
the metric's units): merged ≥ single − tolerance. Metrics are "higher is better" (accuracy,
Pearson, MRR). A NaN anywhere fails the task. Pure function: no I/O.
"""

from __future__ import annotations

import math

from taskloom.errors import UserError


def gate(
    base: dict[str, float],
    single: dict[str, float],
    merged: dict[str, float],
    share: float = 0.9,
    tolerance: float = 0.01,
) -> dict:
    """{"promote", "share", "tolerance", "tasks": {task: {"base","single","merged","gain","kept_share","ok"}},
    "failed": [task...]} over the tasks of `single`; each must also be in `base` and `merged`."""
    if not (isinstance(share, (int, float)) and math.isfinite(share) and share >= 0):
        raise UserError(f"gate: share must be a number >= 0, got {share!r}")
    if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
        raise UserError(f"gate: tolerance must be a number >= 0, got {tolerance!r}")
    if not single:
        raise UserError("gate: no tasks to check (single is empty)")
    tasks, failed = {}, []
    for task in single:
        for name, scores in (("base", base), ("merged", merged)):
            if task not in scores:
                raise UserError(f"gate: task {task!r} has a single-adapter score but no {name} score")
        b, s, m = float(base[task]), float(single[task]), float(merged[task])
        gain = s - b
        if any(math.isnan(x) for x in (b, s, m)):
            kept, ok = None, False
        elif gain > 0:
            kept = (m - b) / gain
            ok = (m - b) >= share * gain - 1e-12
        else:
            kept, ok = None, m >= s - tolerance - 1e-12
        tasks[task] = {"base": b, "single": s, "merged": m, "gain": gain, "kept_share": kept, "ok": bool(ok)}
        if not ok:
            failed.append(task)
    return {"promote": not failed, "share": share, "tolerance": tolerance, "tasks": tasks, "failed": failed}
