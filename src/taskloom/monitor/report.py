"""The drift report: one self-contained HTML file (plots inlined as PNG) per monitor run, a section per task.

Per task: p-value (log scale, with alpha) and effect size (with the policy's minimum) over the
windows, windows that were too small to test, the windows whose run of hits raised an alarm, and a
table of the alarms with their delivery and the retrain run each started.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from taskloom.pages import png, pyplot, write_page

TEMPLATE = """<h1>taskloom drift report</h1>
<p class="sub">{{ meta.detector }} · effect: {{ meta.effect }} · windows of {{ meta.window_s|round(0)|int }} s ·
alarm after {{ meta.policy.consecutive }} windows in a row with BH q ≤ {{ meta.policy.alpha }} and effect ≥ {{ meta.policy.min_effect }},
then {{ meta.policy.cooldown }} windows of cooldown · log <code>{{ meta.log }}</code></p>
{% if not tasks %}<p>No window has closed yet.</p>{% endif %}
{% for t in tasks %}
<h2>{{ t.name }}</h2>
<p>{{ t.tested }} windows tested, {{ t.too_small }} too small to test, {{ t.alarms|length }} alarm{{ '' if t.alarms|length == 1 else 's' }};
reference adapter{{ '' if t.adapters|length == 1 else 's' }} {{ t.adapters|join(', ') }}.</p>
{% if t.png %}<img alt="p-values and effect sizes of {{ t.name }}" src="data:image/png;base64,{{ t.png }}">{% endif %}
{% if t.alarms %}<table><tr><th>alarm key</th><th>windows</th><th>effect</th><th>q-value</th><th>delivery</th><th>retrain run</th></tr>
{% for a in t.alarms %}<tr><td><code>{{ a.key[:16] }}</code></td><td>{{ a.windows|join(', ') }}</td><td>{{ '%.4f'|format(a.effect) }}</td>
<td>{{ '%.4f'|format(a.q_value) }}</td><td class="{{ 'ok' if a.delivery.status in ('delivered', 'duplicate') else 'bad' }}">{{ a.delivery.status }}</td>
<td>{{ a.delivery.run_id or '' }}</td></tr>{% endfor %}</table>{% endif %}
<table><tr><th>window</th><th>requests</th><th>p-value</th><th>q-value</th><th>effect</th><th>hit</th>{% if meta.parts %}<th>{{ meta.parts|join(' / ') }} p</th>{% endif %}<th>alarm</th></tr>
{% for w in t.windows %}<tr><td>{{ w.start_iso }}</td><td>{{ w.n }}</td>
{% if w.status == 'tested' %}<td>{{ '%.4f'|format(w.p_value) }}</td><td>{{ '%.4f'|format(w.q_value) }}</td><td>{{ '%.4f'|format(w.effect) }}</td>
<td class="{{ 'bad' if w.hit else 'ok' }}">{{ 'yes' if w.hit else 'no' }}</td>
{% if meta.parts %}<td>{% for part in meta.parts %}{{ '%.4f'|format(w['p_' ~ part]) if ('p_' ~ part) in w else '-' }}{{ ' / ' if not loop.last }}{% endfor %}</td>{% endif %}
{% else %}<td colspan="{{ 5 if meta.parts else 4 }}">{{ 'too small to test' if w.status == 'too_small' else 'not tested: ' ~ w.status|replace('_', ' ') }}</td>{% endif %}
<td>{% if w.alarm %}<code class="bad">{{ w.alarm[:12] }}</code>{% elif w.cooldown %}cooldown{% endif %}</td></tr>{% endfor %}</table>
{% endfor %}
"""


def _plot(windows: list[dict], meta: dict) -> str:
    """p-values (log) over time on top, effect sizes below; alarmed windows in red, untested as grey ticks."""
    plt = pyplot()
    tested = [w for w in windows if w["status"] == "tested"]
    when = lambda ws: [datetime.fromisoformat(w["start_iso"].replace("Z", "+00:00")) for w in ws]  # noqa: E731
    fig, (ax_p, ax_e) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True)
    if tested:
        ax_p.plot(
            when(tested), [max(w["p_value"], 1e-4) for w in tested], "o-", ms=3, lw=1, color="#2f6fdf", label="p-value"
        )
        ax_e.plot(when(tested), [w["effect"] for w in tested], "o-", ms=3, lw=1, color="#f08c00", label="effect")
    hits = [w for w in tested if w.get("hit")]
    if hits:
        ax_p.plot(
            when(hits), [max(w["p_value"], 1e-4) for w in hits], "o", ms=6, mfc="none", color="#b42318", label="hit"
        )
    for w in windows:
        if w.get("alarm"):
            for ax in (ax_p, ax_e):
                ax.axvline(when([w])[0], color="#b42318", lw=1.5, alpha=0.7)
    small = [w for w in windows if w["status"] != "tested"]
    if small:
        ax_p.plot(when(small), [1.0] * len(small), "|", ms=10, color="#999", label="too small")
    ax_p.axhline(meta["policy"]["alpha"], ls="--", color="#444", lw=1, label="alpha")
    ax_e.axhline(meta["policy"]["min_effect"], ls="--", color="#444", lw=1, label="min effect")
    ax_p.set_yscale("log")
    ax_p.set_ylabel("p-value")
    ax_e.set_ylabel(meta.get("effect") or "effect")
    ax_p.legend(fontsize=7, loc="lower left")
    ax_e.legend(fontsize=7, loc="upper left")
    fig.autofmt_xdate()
    return png(fig)


def write_drift_report(path: str | Path, windows: list[dict], alarms: list[dict], meta: dict) -> Path:
    """Render windows.jsonl and alarms.jsonl records of a monitor run into one HTML file."""
    tasks = []
    for name in sorted({w["task"] for w in windows}):
        ws = sorted((w for w in windows if w["task"] == name), key=lambda w: w["start"])
        tasks.append(
            {
                "name": name,
                "windows": ws,
                "tested": sum(w["status"] == "tested" for w in ws),
                "too_small": sum(w["status"] != "tested" for w in ws),
                "adapters": sorted({w["adapter_id"] for w in ws}),
                "alarms": [a for a in alarms if a["task"] == name],
                "png": _plot(ws, meta),
            }
        )
    return write_page(path, "taskloom drift report", TEMPLATE, tasks=tasks, meta=meta)
