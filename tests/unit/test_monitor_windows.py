"""The request log (writers never interleave, readers never see half a line) and tumbling windows."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import pytest

from taskloom.errors import UserError
from taskloom.monitor.windows import TumblingWindows, iso
from taskloom.requestlog import LogReader, append

T0 = 1_700_000_100.0  # a multiple of 300 and of 60


def test_append_writes_one_line_per_text_and_reader_returns_them(tmp_path):
    log = tmp_path / "logs" / "requests.jsonl"
    assert append(log, "rt", ["a fine film", "ünïcode ✓"], ts=T0) == 2
    assert append(log, "qa", "one text", ts=datetime.fromtimestamp(T0 + 1, timezone.utc)) == 1
    assert append(log, "qa", [], ts=T0) == 0
    lines = log.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"ts": T0, "task": "rt", "text": "a fine film"}
    rows = LogReader(log).poll()
    assert [(r["task"], r["text"], r["ts"]) for r in rows] == [("rt", "a fine film", T0), ("rt", "ünïcode ✓", T0),
                                                              ("qa", "one text", T0 + 1)]


def test_concurrent_writers_never_interleave(tmp_path):
    log = tmp_path / "requests.jsonl"
    text = "x" * 5000  # lines longer than a pipe buffer's atomic size

    def writer(i):
        for j in range(40):
            append(log, f"t{i}", [f"{i}-{j}-{k}-{text}" for k in range(5)], ts=T0 + j)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    rows = LogReader(log).poll()
    assert len(rows) == 4 * 40 * 5
    seen = {r["text"].split("-x")[0] for r in rows}
    assert len(seen) == 800 and all(r["text"].endswith(text) for r in rows)


def test_reader_stops_before_an_unfinished_line_and_resumes(tmp_path):
    log = tmp_path / "requests.jsonl"
    append(log, "rt", ["one"], ts=T0)
    with open(log, "a") as f:
        f.write('{"ts": 1700000101, "task": "rt", "te')
    reader = LogReader(log)
    assert [r["text"] for r in reader.poll()] == ["one"]
    assert reader.poll() == []
    with open(log, "a") as f:
        f.write('xt": "two"}\n')
    assert [r["text"] for r in reader.poll()] == ["two"] and reader.lineno == 2
    with open(log, "a") as f:
        f.write('{"ts": 1700000102, "task": "rt", "text": "three"}')  # no newline: only a final read takes it
    assert reader.poll() == [] and [r["text"] for r in reader.poll(final=True)] == ["three"]


@pytest.mark.parametrize("line, needle", [
    ("{not json", "line 2: not valid JSON"),
    ("[1, 2]", "line 2: expected a JSON object, got list"),
    ('{"ts": 1, "task": "rt"}', "line 2: missing field 'text'"),
    ('{"ts": "yesterday", "task": "rt", "text": "a"}', "line 2: field 'ts' must be seconds since the epoch"),
    ('{"ts": 1, "task": "", "text": "a"}', "line 2: field 'task' must be a non-empty string"),
    ('{"ts": 1, "task": "rt", "text": 5}', "line 2: field 'text' must be a string, got int"),
])
def test_bad_lines_name_the_line(tmp_path, line, needle):
    log = tmp_path / "requests.jsonl"
    log.write_text('{"ts": 1, "task": "rt", "text": "ok"}\n' + line + "\n")
    with pytest.raises(UserError, match=needle):
        LogReader(log).poll()


def test_bad_appends_are_user_errors_and_a_truncated_log_is_read_again(tmp_path):
    log = tmp_path / "requests.jsonl"
    with pytest.raises(UserError, match="task must be a non-empty string"):
        append(log, "", ["a"])
    with pytest.raises(UserError, match="text 1 for task 'rt' must be a string, got int"):
        append(log, "rt", ["a", 3])
    with pytest.raises(UserError, match="needs a time zone"):
        append(log, "rt", ["a"], ts=datetime(2024, 1, 1))
    with pytest.raises(UserError, match="ts must be seconds since the epoch"):
        append(log, "rt", ["a"], ts=float("nan"))
    assert not log.exists()
    append(log, "rt", ["a", "b"], ts=T0)
    reader = LogReader(log)
    reader.poll()
    log.write_text("")  # truncated in place: followed from byte 0 (tests/unit/test_request_log_rows.py)
    assert reader.poll() == [] and reader.rotations == 1
    with pytest.raises(UserError, match="no such request log"):
        LogReader(tmp_path / "nope.jsonl").poll()


def test_tumbling_windows_share_epoch_aligned_boundaries_across_tasks():
    w = TumblingWindows(size=60)
    for ts, task in [(T0 + 1, "a"), (T0 + 59.9, "b"), (T0 + 30, "a"), (T0 + 60, "a"), (T0 + 125, "b")]:
        assert w.add({"ts": ts, "task": task, "text": f"{task}@{ts - T0:g}"})
    closed = w.close()  # the log's time is T0 + 125: windows ending at or before T0 + 120 are over
    assert [(x.task, x.start - T0, x.n) for x in closed] == [("a", 0, 2), ("b", 0, 1), ("a", 60, 1)]
    assert closed[0].texts == ["a@1", "a@30"] and iso(closed[0].start) == "2023-11-14T22:15:00Z"
    assert not w.add({"ts": T0 + 10, "task": "a", "text": "late"}) and w.late == 1
    assert w.close() == []
    assert [(x.task, x.start - T0) for x in w.close(until=T0 + 181)] == [("b", 120)]


def test_lateness_keeps_a_window_open_and_flush_closes_everything():
    w = TumblingWindows(size=60, lateness=10)
    w.add({"ts": T0 + 5, "task": "a", "text": "x"})
    w.add({"ts": T0 + 65, "task": "a", "text": "y"})
    assert w.close() == []  # T0 + 65 - 10 is still inside the first window
    assert w.add({"ts": T0 + 50, "task": "a", "text": "on time"})
    assert [x.n for x in w.close(until=T0 + 70)] == [2]
    assert [(x.start - T0, x.n) for x in w.flush()] == [(60, 1)]
    with pytest.raises(ValueError):
        TumblingWindows(size=0)
