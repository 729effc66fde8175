"""Write RELIABILITY.md from the evidence the tests leave in build/reliability/.

    .venv/bin/python scripts/reliability.py [--evidence build/reliability] [--out RELIABILITY.md]

The whole refresh (the fuzz tests under coverage.py, then this script):

    .venv/bin/coverage run --data-file=build/reliability/.coverage --include='src/taskloom/*' -m pytest -q tests/fuzz
    .venv/bin/coverage json --data-file=build/reliability/.coverage -o build/reliability/coverage.json
    .venv/bin/python scripts/reliability.py

Reads, all optional:
- fuzz.json: one JSON object per line, written by tests/fuzz (surface, tier, cases, accepted, refused,
  other, command, ts);
- faults.json: one JSON object per line, written by tests/faults (surface, fault, cases, outcome, command, ts);
- coverage.json: coverage.py's JSON report (`coverage json`) of a run of tests/fuzz, for the line coverage
  of each surface's parsing module.
A later row for the same surface and tier (fuzz) or surface and fault (faults) replaces an earlier one, so
the table shows the latest run of each test. The file is written atomically; a damaged evidence line is an
error naming the file and line, never skipped in silence.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The parsing code of each fuzzed surface: {module: its parsing functions, or None for the whole module}.
# Modules that also hold other work (the CLI's command bodies, training a head, the step specs, the log
# writer) are measured over the functions that read and check the input.
PARSING: dict[str, dict[str, list[str] | None]] = {
    "task.yaml": {
        "src/taskloom/specs.py": [
            "_no_nul",
            "TaskSpec._known_type",
            "TaskSpec._labels_unique",
            "TaskSpec._labels_iff_classification",
            "TaskSpec.train_path",
            "TaskSpec.eval_path",
            "_first_error",
            "read_yaml",
            "load_task",
        ],
    },
    "JSONL / Parquet rows": {"src/taskloom/data/rows.py": None, "src/taskloom/jsonfiles.py": None},
    "merge.yaml": {
        "src/taskloom/specs.py": [
            "AdapterRef._bare_path",
            "MergeSpec._tasks_no_nul",
            "MergeSpec.adapter_paths",
            "load_merge",
        ],
        "src/taskloom/merge/provenance.py": ["recorded_base", "same_base", "check_base"],
    },
    "adapter folders": {
        "src/taskloom/serve/adapters.py": None,
        "src/taskloom/models/adapter.py": ["read_config", "split_keys", "pattern_value", "factor_scaling"],
        "src/taskloom/models/heads.py": ["read_tensors", "has_head", "load_head"],
        "src/taskloom/serve/lora.py": ["read_servable_config", "read_lora"],
    },
    "drift inputs": {
        "src/taskloom/monitor/drift.py": [
            "check_options",
            "check_embeddings",
            "check_labels",
            "drift_embeddings",
            "read_texts",
            "read_sample",
        ],
        "src/taskloom/requestlog.py": [
            "_finite_number",
            "parse_line",
            "LogReader.poll",
            "LogReader._read",
            "LogReader._open",
        ],
    },
    "CloudEvents": {
        "src/taskloom/events/receiver.py": ["verify", "_event_time", "Rejected.__init__"],
        "src/taskloom/events/gateway.py": ["refusal_reason", "EventGateway._reject", "EventGateway.handle"],
    },
    "Triton requests": {
        "src/taskloom/serve/backend.py": [
            "decode_texts",
            "EncoderBackend.check_adapter",
            "EncoderBackend.execute",
            "EncoderBackend.serve",
        ],
    },
    "CLI arguments": {"src/taskloom/cli.py": ["main"]},
}


class EvidenceError(Exception):
    pass


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise EvidenceError(f"{path}: line {n}: not JSON ({e})") from None
        if not isinstance(row, dict) or "surface" not in row or "command" not in row:
            raise EvidenceError(f"{path}: line {n}: expected an object with 'surface' and 'command'")
        rows.append(row)
    return rows


def latest(rows: list[dict], key) -> list[dict]:
    """The last row of each key, in the order keys first appeared."""
    out: dict = {}
    for row in rows:
        out.pop(key(row), None)
        out[key(row)] = row
    return sorted(out.values(), key=lambda r: (r["surface"], str(r.get("tier", "")), str(r.get("fault", ""))))


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def fuzz_table(rows: list[dict]) -> list[str]:
    lines = [
        "| surface | tier | cases tried | accepted | refused with UserError (or an error answer) | other exception | command |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {cell(r['surface'])} | {cell(r.get('tier', ''))} | {r.get('cases', 0):,} | {r.get('accepted', 0):,} | "
            f"{r.get('refused', 0):,} | {r.get('other', 0):,} | `{cell(r['command'])}` |"
        )
    return lines


def fault_table(rows: list[dict]) -> list[str]:
    lines = ["| surface | fault | cases | outcome | command |", "|---|---|---:|---|---|"]
    for r in rows:
        lines.append(
            f"| {cell(r['surface'])} | {cell(r.get('fault', ''))} | {r.get('cases', '')} | {cell(r.get('outcome', ''))} | "
            f"`{cell(r['command'])}` |"
        )
    return lines


def coverage_table(path: Path) -> list[str]:
    """Line coverage of each surface's parsing code, from coverage.py's JSON report (none: no table)."""
    if not path.exists():
        return []
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        files = {_relative(k): v for k, v in report["files"].items()}
    except (ValueError, KeyError, TypeError) as e:
        raise EvidenceError(f"{path}: not a coverage.py JSON report ({type(e).__name__})") from None
    lines = [
        "| surface | parsing code | lines | covered | line coverage |",
        "|---|---|---:|---:|---:|",
    ]
    for surface, modules in PARSING.items():
        for module, functions in modules.items():
            entry = files.get(module)
            if entry is None:
                lines.append(f"| {surface} | `{module}` | | | not measured |")
                continue
            if functions is None:
                parts, what = [entry["summary"]], f"`{module}`"
            else:
                parts = [entry["functions"][f]["summary"] for f in functions if f in entry.get("functions", {})]
                what = f"`{module}`: {', '.join(f'`{f}`' for f in functions)}"
            total = sum(p["num_statements"] for p in parts)
            covered = sum(p["covered_lines"] for p in parts)
            share = f"{100 * covered / total:.0f} %" if total else "-"
            lines.append(f"| {surface} | {what} | {total} | {covered} | {share} |")
    return lines


def _relative(name: str) -> str:
    p = Path(name)
    return str(p.resolve().relative_to(REPO)) if p.is_absolute() else name


def render(evidence: Path) -> str:
    fuzz = latest(read_rows(evidence / "fuzz.json"), lambda r: (r["surface"], r.get("tier")))
    faults = latest(read_rows(evidence / "faults.json"), lambda r: (r["surface"], r.get("fault")))
    cov = coverage_table(evidence / "coverage.json")
    dates = sorted(r.get("ts", "") for r in fuzz + faults if r.get("ts"))
    out = [
        "# Reliability",
        "",
        "What each input surface and fault was tried with, and what happened: written by",
        "`scripts/reliability.py` from the evidence the tests record in `build/reliability/` (a row per test;",
        "rerun the test's command and the script to refresh it). Do not edit by hand.",
        "",
    ]
    if dates:
        out += [f"Evidence from {dates[0]} to {dates[-1]} (UTC).", ""]
    out += [
        "## Fuzzing",
        "",
        "Each case is a valid input (a real task.yaml, catalog rows, a trained adapter folder, a signed",
        "CloudEvent, a Triton request, a command line) with one thing changed: a field dropped, a wrong type, a",
        "huge value, invalid UTF-8, NUL bytes, deep nesting, truncation, an extra field. A case passes when the",
        "input is accepted, or refused with `UserError` (a server: an error answer) in one line naming the file,",
        "row or field; any other exception fails the test. The default tier runs with `make test`, the slow tier",
        "with `make test-all`.",
        "",
    ]
    out += fuzz_table(fuzz) if fuzz else ["No fuzz evidence yet: run `.venv/bin/pytest -q tests/fuzz`."]
    notes = dict.fromkeys(f"- {r['surface']}: {cell(r['note'])}" for r in fuzz if r.get("note"))
    if notes:
        out += ["", "Notes:", "", *notes]
    if cov:
        out += [
            "",
            "### Line coverage of the parsing code under the fuzz tests",
            "",
            "From `build/reliability/coverage.json` (the commands that refresh it are in `scripts/reliability.py`).",
            "",
            *cov,
        ]
    out += ["", "## Faults", ""]
    out += fault_table(faults) if faults else ["No fault evidence yet: run `.venv/bin/pytest -q tests/faults`."]
    return "\n".join(out) + "\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--evidence", type=Path, default=REPO / "build" / "reliability")
    parser.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    args = parser.parse_args(argv)
    try:
        text = render(args.evidence)
    except EvidenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_atomic(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
