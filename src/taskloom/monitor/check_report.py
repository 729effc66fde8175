"""One two-sample drift check (`drift_step`: a reference against a current window) as a self-contained
HTML page, written beside drift.json as drift.html: the verdict, the test's numbers and the two samples.
The monitor's page over many windows is taskloom.monitor.report."""

from __future__ import annotations

from pathlib import Path

from taskloom.pages import write_page

SHOWN = ("method", "statistic", "p_value", "alpha", "effect", "n_reference", "n_current", "field")

TEMPLATE = """<h1>Drift check: <span class="{{ 'bad' if r.drift else 'ok' }}">{{ 'drift' if r.drift else 'no drift' }}</span></h1>
<p class="sub">{{ r.method }}: p = {{ "%.4g"|format(r.p_value) }} {{ '<' if r.drift else '≥' }} α = {{ r.alpha }}
({{ r.n_reference }} reference vs {{ r.n_current }} current)</p>
<table>{% for k, v in rows %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>
<div class="text"><table><tr><th>reference</th><td><code>{{ r.reference }}</code></td></tr>
<tr><th>current</th><td><code>{{ r.current }}</code></td></tr></table></div>
"""


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_check_report(path: str | Path, result: dict) -> Path:
    """The page of `result` (what `drift_files` returns) at `path`, atomically; the detector's own
    numbers (beyond the shared ones) are listed after them."""
    keys = [k for k in SHOWN if k in result]
    keys += sorted(
        k
        for k, v in result.items()
        if k not in keys and k not in ("drift", "reference", "current") and isinstance(v, (int, float, str))
    )
    return write_page(
        path,
        f"taskloom drift check: {'drift' if result['drift'] else 'no drift'}",
        TEMPLATE,
        r=result,
        rows=[(k, _cell(result[k])) for k in keys],
    )
