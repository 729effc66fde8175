"""Request-log rows as the server writes them (v2: sampling, no text unless asked, head outputs), v1 rows
still read, and the writer's rotation followed by the reader."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from taskloom.errors import UserError
from taskloom.monitor.windows import TumblingWindows
from taskloom.requestlog import LogReader, append, append_rows, parse_line, rotated_path
from taskloom.serve.requests_log import LogSettings, Served, ServedLog

T0 = 1_700_000_100.0


def served() -> list[Served]:
    probs = np.array([[0.9, 0.1], [0.2345678, 0.7654322]], dtype=np.float32)
    return [
        Served("rt", None, ["a fine film", "dull"], ["fresh", "rotten"], probs),
        Served("qa", "qa-lora", ["who wrote it?"]),  # an adapter without a head
    ]


def test_v2_rows_carry_task_model_version_adapter_and_head_outputs_but_no_text_by_default(tmp_path):
    log = ServedLog(LogSettings(tmp_path / "r.jsonl"), model="taskloom", version="3")
    rows = log.rows(served(), ts=T0)
    assert [(r["task"], r["adapter"], r.get("label")) for r in rows] == [
        ("rt", None, "fresh"),
        ("rt", None, "rotten"),
        ("qa", "qa-lora", None),
    ]
    assert all(r["v"] == 2 and r["model"] == "taskloom" and r["version"] == "3" and r["ts"] == T0 for r in rows)
    assert not any("text" in r for r in rows) and "probs" not in rows[2]
    assert rows[1]["probs"] == [0.234568, 0.765432]  # rounded to 6 digits
    with_text = ServedLog(LogSettings(tmp_path / "r.jsonl", include_text=True), "taskloom", "3").rows(served())
    assert [r["text"] for r in with_text] == ["a fine film", "dull", "who wrote it?"]


def test_sampling_rate_zero_writes_nothing_one_everything_and_between_about_its_share(tmp_path):
    path = tmp_path / "r.jsonl"
    assert ServedLog(LogSettings(path, sample_rate=0.0), "m", "1").record(served()) == 0
    assert not path.exists()
    assert ServedLog(LogSettings(path, sample_rate=1.0), "m", "1").record(served()) == 3
    many = [Served("rt", None, [f"text {i}" for i in range(4000)])]
    kept = len(ServedLog(LogSettings(path, sample_rate=0.25), "m", "1", rng=random.Random(0)).rows(many))
    assert 850 < kept < 1150  # binomial(4000, 0.25): mean 1000, sd 27


def test_rows_written_by_the_server_log_read_back_as_v2(tmp_path):
    path = tmp_path / "logs" / "r.jsonl"
    log = ServedLog(LogSettings(path, include_text=True), "toy", "2")
    assert log.record(served()) == 3 and log.written == 3
    rows = LogReader(path).poll()
    assert [r["text"] for r in rows] == ["a fine film", "dull", "who wrote it?"]
    assert rows[0]["label"] == "fresh" and rows[0]["probs"] == pytest.approx([0.9, 0.1], abs=1e-6)
    assert rows[2]["adapter"] == "qa-lora" and rows[2]["label"] is None and rows[2]["v"] == 2


def test_a_failing_write_never_fails_the_request_and_is_reported_once(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = ServedLog(LogSettings(blocker / "r.jsonl"), "m", "1")  # its folder is a file: every write fails
    assert log.record(served()) == 0 and log.record(served()) == 0
    assert log.dropped == 6
    assert capsys.readouterr().err.count("cannot write") == 1


def test_settings_from_the_environment(tmp_path):
    assert LogSettings.from_env({}) is None and LogSettings.from_env({"TASKLOOM_REQUEST_LOG": " "}) is None
    s = LogSettings.from_env({"TASKLOOM_REQUEST_LOG": str(tmp_path / "r.jsonl")})
    assert s == LogSettings(tmp_path / "r.jsonl", 1.0, False, 64 << 20)
    s = LogSettings.from_env(
        {
            "TASKLOOM_REQUEST_LOG": str(tmp_path / "r.jsonl"),
            "TASKLOOM_REQUEST_LOG_SAMPLE_RATE": "0.1",
            "TASKLOOM_REQUEST_LOG_TEXT": "True",
            "TASKLOOM_REQUEST_LOG_MAX_BYTES": "0",
        }
    )
    assert (s.sample_rate, s.include_text, s.max_bytes) == (0.1, True, 0)


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"TASKLOOM_REQUEST_LOG": "runs/r.jsonl"}, "give an absolute path"),
        ({"TASKLOOM_REQUEST_LOG_SAMPLE_RATE": "1.5"}, "SAMPLE_RATE=1.5: must be a number between 0 and 1"),
        ({"TASKLOOM_REQUEST_LOG_SAMPLE_RATE": "nan"}, "SAMPLE_RATE=nan: must be a number between 0 and 1"),
        ({"TASKLOOM_REQUEST_LOG_SAMPLE_RATE": "half"}, "SAMPLE_RATE=half: must be a number"),
        ({"TASKLOOM_REQUEST_LOG_TEXT": "maybe"}, "TASKLOOM_REQUEST_LOG_TEXT=maybe: use true or false"),
        ({"TASKLOOM_REQUEST_LOG_MAX_BYTES": "-1"}, "MAX_BYTES=-1: must be 0 (never rotate)"),
        ({"TASKLOOM_REQUEST_LOG_MAX_BYTES": "1e6"}, "MAX_BYTES=1e6: must be a whole number of bytes"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path, env, needle):
    env = {"TASKLOOM_REQUEST_LOG": str(tmp_path / "r.jsonl"), **env}
    with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        LogSettings.from_env(env)


def test_v1_rows_stay_readable_and_v2_rows_are_checked():
    assert parse_line('{"ts": 1, "task": "rt", "text": "a"}', "l") == {"ts": 1.0, "task": "rt", "text": "a"}
    row = parse_line('{"v": 2, "ts": 1, "task": "rt", "adapter": null, "label": "fresh", "probs": [0.5, 0.5]}', "l")
    assert row["text"] is None and row["label"] == "fresh" and row["v"] == 2
    for line, needle in [
        ('{"ts": 1, "task": "rt"}', "missing field 'text'"),  # v1: the text is required
        ('{"v": 3, "ts": 1, "task": "rt"}', "row version 3 is not one this taskloom reads"),
        ('{"v": 2, "task": "rt"}', "missing field 'ts'"),
        ('{"v": 2, "ts": 1, "task": "rt", "probs": [0.5, "x"]}', "field 'probs' must be a list of finite numbers"),
        ('{"v": 2, "ts": 1, "task": "rt", "label": 1}', "field 'label' must be a string or null"),
        ('{"v": 2, "ts": 1, "task": "rt", "text": 5}', "field 'text' must be a string"),
    ]:
        with pytest.raises(UserError, match=needle):
            parse_line(line, "l")


def test_rotation_keeps_the_log_under_max_bytes_and_one_predecessor(tmp_path):
    path = tmp_path / "r.jsonl"
    line = len(json.dumps({"ts": T0, "task": "rt", "text": "x" * 50}) + "\n")
    for _ in range(10):
        append_rows(path, [{"ts": T0, "task": "rt", "text": "x" * 50}] * 2, max_bytes=5 * line)
    assert path.stat().st_size <= 5 * line and rotated_path(path).stat().st_size <= 5 * line
    assert len(path.read_text().splitlines()) + len(rotated_path(path).read_text().splitlines()) == 8  # 2 batches each
    append_rows(path, [{"ts": T0, "task": "rt", "text": "y" * 50}] * 20, max_bytes=5 * line)  # one batch > max
    assert len(path.read_text().splitlines()) == 20  # started afresh, written whole


def test_the_reader_follows_a_rotation_without_losing_or_repeating_a_row(tmp_path):
    path = tmp_path / "r.jsonl"
    max_bytes = 150  # about three rows
    reader = LogReader(path)
    append(path, "rt", ["r0"], ts=T0)
    seen = [r["text"] for r in reader.poll()]
    for i in range(1, 12):  # rotates several times, but at most once between two polls
        append_rows(path, [{"ts": T0, "task": "rt", "text": f"r{i}"}], max_bytes=max_bytes)
        if i % 2 == 0:
            seen += [r["text"] for r in reader.poll()]
    seen += [r["text"] for r in reader.poll()]
    assert reader.rotations >= 1 and rotated_path(path).exists()
    assert seen == [f"r{i}" for i in range(12)]
    reader.close()


def test_a_log_truncated_in_place_is_read_again_from_the_start(tmp_path):
    path = tmp_path / "r.jsonl"
    append(path, "rt", ["a", "b", "c"], ts=T0)
    reader = LogReader(path)
    assert len(reader.poll()) == 3
    path.write_text("")
    append(path, "rt", ["d"], ts=T0)
    assert [r["text"] for r in reader.poll()] == ["d"] and reader.rotations == 1 and reader.lineno == 1


def test_concurrent_writers_rotating_never_interleave_lines(tmp_path):
    path = tmp_path / "r.jsonl"

    def writer(i):
        for j in range(60):
            append_rows(path, [{"ts": T0, "task": f"t{i}", "text": f"{i}-{j}-{'x' * 300}"}] * 3, max_bytes=20_000)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for f in (path, rotated_path(path)):
        assert f.stat().st_size <= 20_000
        rows = LogReader(f).poll(final=True)  # every line parses: none was cut or interleaved
        assert rows and all(r["text"].endswith("x" * 300) for r in rows)
    assert not [p for p in os.listdir(tmp_path) if p not in ("r.jsonl", "r.jsonl.1")]


def test_windows_take_rows_without_text_and_keep_their_labels():
    w = TumblingWindows(size=60)
    w.add({"ts": T0 + 1, "task": "rt", "text": None, "label": "fresh"})
    w.add({"ts": T0 + 2, "task": "rt", "text": "a fine film"})
    w.add({"ts": T0 + 3, "task": "rt", "text": None, "label": None})
    (win,) = w.flush()
    assert (win.n, win.texts, win.labels) == (3, ["a fine film"], ["fresh"])


def test_append_still_refuses_bad_input_before_writing(tmp_path):
    log = Path(tmp_path) / "r.jsonl"
    with pytest.raises(UserError, match="must be a string, got int"):
        append(log, "rt", ["a", 3])
    assert not log.exists()
