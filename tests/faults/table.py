"""Print RELIABILITY.md's fault table from build/reliability/faults.json (the newest line per test).

.venv/bin/python tests/faults/table.py
"""

from __future__ import annotations

import json

from faultkit import EVIDENCE


def table() -> str:
    latest: dict[str, dict] = {}
    for line in EVIDENCE.read_text().splitlines():
        row = json.loads(line)
        latest[row["test"]] = row
    out = ["| surface | fault | cases | outcome | reproduce |", "|---|---|---|---|---|"]
    for r in sorted(latest.values(), key=lambda r: (r["surface"], r["test"])):
        out.append(f"| {r['surface']} | {r['fault']} | {r['cases']} | {r['outcome']} | `{r['command']}` |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table())
