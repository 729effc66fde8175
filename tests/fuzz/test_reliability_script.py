"""scripts/reliability.py: RELIABILITY.md from the evidence rows, the latest row per test, damaged evidence refused."""

from __future__ import annotations

import importlib.util
import json

from conftest import ROOT

spec = importlib.util.spec_from_file_location("reliability", ROOT / "scripts" / "reliability.py")
assert spec is not None and spec.loader is not None
reliability = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reliability)


def rows(path, *objs):
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))


def test_table_keeps_the_latest_row_of_each_test_and_lists_faults(tmp_path, capsys):
    fuzz = {
        "surface": "task.yaml",
        "tier": "default",
        "cases": 100,
        "accepted": 30,
        "refused": 70,
        "other": 0,
        "command": ".venv/bin/pytest -q 'x[default]'",
        "ts": "2026-01-01T00:00:00Z",
    }
    rows(tmp_path / "fuzz.json", {**fuzz, "accepted": 1, "refused": 99}, fuzz)
    rows(
        tmp_path / "faults.json",
        {
            "surface": "merge",
            "fault": "kill -9 | mid-write",
            "cases": 3,
            "outcome": "previous output whole",
            "command": "pytest y",
        },
    )
    cov = {
        "files": {
            "src/taskloom/cli.py": {
                "summary": {},
                "functions": {"main": {"summary": {"num_statements": 10, "covered_lines": 8}}},
            }
        }
    }
    (tmp_path / "coverage.json").write_text(json.dumps(cov))
    out = tmp_path / "RELIABILITY.md"
    assert reliability.main(["--evidence", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| task.yaml | default | 100 | 30 | 70 | 0 | `.venv/bin/pytest -q 'x[default]'` |" in text
    assert "| 1 | 99 |" not in text  # the earlier run of the same test is replaced
    assert "kill -9 \\| mid-write" in text and "previous output whole" in text
    assert "| CLI arguments | `src/taskloom/cli.py`: `main` | 10 | 8 | 80 % |" in text


def test_damaged_evidence_is_one_line_and_nothing_written(tmp_path, capsys):
    (tmp_path / "fuzz.json").write_text('{"surface": "x", "command": "c"}\n{not json\n')
    out = tmp_path / "RELIABILITY.md"
    assert reliability.main(["--evidence", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'fuzz.json'}: line 2: not JSON") and err.count("\n") == 1
    assert not out.exists()
