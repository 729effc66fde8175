"""Load: the monitor over 10,000 windows of traffic with no drift keeps a stable false-alarm rate.

The traffic is what the served head would log (v2 rows, labels and no text) drawn from the same label
distribution as the task's reference, so every alarm is a false one. `--method chi2` tests each window's
labels against the reference's (the head applied to the reference embeddings in Feast). A window is
significant at about alpha; an alarm needs two in a row, then a cooldown, so about alpha² of the windows
alarm. Both rates must stay at or below those (controlled) and be the same in each fifth of the run
(stable: the monitor's growing state changes nothing).

    .venv/bin/python -m pytest -q -m slow tests/faults/test_load_monitor.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from taskloom.cli import main
from taskloom.requestlog import append_rows

pytestmark = pytest.mark.slow

WINDOWS = 10_000
ROWS = 60  # per window
WINDOW_S = 60.0
T0 = 1_700_000_040.0  # a multiple of the window
ALPHA = 0.05


def _within(count: int, n: int, p: float, z: float = 4.0) -> bool:
    """`count` of `n` is within z standard deviations of a binomial(n, p) mean."""
    return abs(count - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1


def test_ten_thousand_null_windows_keep_a_stable_false_alarm_rate(tmp_path, evidence):
    import torch

    from taskloom.models.heads import save_head
    from taskloom.models.registry import resolve_base
    from taskloom.store.feature_store import TaskStore

    rng = np.random.default_rng(7)
    reference = rng.normal(size=(400, 384)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    store = TaskStore(tmp_path / "feature_repo")
    store.apply()
    store.write_reference("rt", "rt-v1", reference)
    model = tmp_path / "model"
    model.mkdir()
    for f in resolve_base("minilm").iterdir():
        if f.is_file():
            (model / f.name).symlink_to(f)
    torch.manual_seed(0)
    head = torch.nn.Linear(384, 3)
    with torch.no_grad():  # three random directions, no bias: about a third of the reference each
        head.weight.copy_(torch.randn(3, 384))
        head.bias.zero_()
    labels = ["neg", "neu", "pos"]
    save_head(model / "heads" / "rt", head, labels)
    with torch.inference_mode():
        ref_labels = head(torch.from_numpy(reference)).argmax(1).numpy()
    share = np.bincount(ref_labels, minlength=3) / len(ref_labels)
    assert (share > 0.1).all()  # every label common enough for the chi-squared approximation

    log = tmp_path / "requests.jsonl"
    for start in range(0, WINDOWS, 500):  # null traffic: each window's labels drawn from the reference's shares
        rows = []
        for w in range(start, min(start + 500, WINDOWS)):
            drawn = rng.choice(3, size=ROWS, p=share)
            ts = T0 + w * WINDOW_S + np.sort(rng.uniform(1, WINDOW_S - 1, size=ROWS))
            rows += [
                {
                    "v": 2,
                    "ts": float(t),
                    "task": "rt",
                    "model": "taskloom",
                    "version": "1",
                    "adapter": "rt",
                    "label": labels[k],
                }
                for t, k in zip(ts, drawn)
            ]
        append_rows(log, rows)

    out = tmp_path / "mon"
    code = main(["monitor", "--log", str(log), "--feature-repo", str(tmp_path / "feature_repo"), "--out", str(out),
                 "--once", "--task", "rt", "--method", "chi2", "--model", str(model), "--window", str(WINDOW_S),
                 "--min-rows", "30", "--alpha", str(ALPHA), "--consecutive", "2", "--cooldown", "3",
                 "--permutations", "200"])  # fmt: skip
    assert code == 0
    records = [json.loads(x) for x in (out / "windows.jsonl").read_text().splitlines()]
    tested = [r for r in records if r.get("status") == "tested"]
    assert len(tested) >= WINDOWS - 1  # the last window may still be open at the end of the log
    alarms = (
        [json.loads(x) for x in (out / "alarms.jsonl").read_text().splitlines()]
        if (out / "alarms.jsonl").exists()
        else []
    )
    significant = np.array([r["p_value"] <= ALPHA for r in tested])
    starts = np.array([r["start_iso"] for r in tested])  # ISO times, as the alarms name windows
    alarm_starts = np.array(sorted(a["window_start"] for a in alarms))
    n = len(tested)
    # controlled: at most alpha of the windows significant, at most about alpha² alarming (two in a row)
    rate, alarm_rate = float(significant.mean()), len(alarms) / n
    assert significant.sum() <= n * ALPHA + 4 * math.sqrt(n * ALPHA * (1 - ALPHA)), rate
    assert len(alarms) <= n * ALPHA**2 + 4 * math.sqrt(n * ALPHA**2) + 1, len(alarms)
    # stable: each fifth of the run at the run's own rates (the monitor's growing state changes nothing)
    per_fifth = []
    for idx in np.array_split(np.arange(n), 5):
        lo, hi = starts[idx[0]], starts[idx[-1]]
        k = int(((alarm_starts >= lo) & (alarm_starts <= hi)).sum())
        per_fifth.append((round(float(significant[idx].mean()), 4), k))
        assert _within(int(significant[idx].sum()), len(idx), rate), per_fifth
        assert abs(k - len(idx) * alarm_rate) <= 4 * math.sqrt(len(idx) * alarm_rate) + 2, per_fifth
    evidence(
        "monitor",
        f"{n:,} windows of null traffic ({ROWS} requests each, chi2 on logged labels)",
        n,
        f"significant {rate:.4f} (alpha {ALPHA}), alarms {len(alarms)} ({alarm_rate:.4f} per window, alpha² "
        f"{ALPHA**2:.4f}); per fifth (significant share, alarms): {per_fifth}",
    )
