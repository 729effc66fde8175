"""The HTML report of a loop run: one self-contained file (plots inlined as PNG) a person can open.

Pictures where they beat numbers: each task's metric base → tuned → merged, the training loss
curves, and the drift test of each traffic stream against its reference.
"""

from __future__ import annotations

from pathlib import Path

from taskloom.pages import png, pyplot, write_page

TEMPLATE = """<h1>taskloom</h1><p class="sub">validate → profile → train → merge → gate → serve → drift → retrain · {{ total_s|round(0)|int }} s</p>

<h2>Tasks</h2>
<table><tr><th>task</th><th>type</th><th>metric</th><th>base</th><th>tuned</th><th>merged</th></tr>
{% for name, t in tasks.items() %}<tr><td>{{ name }}</td><td>{{ t.type }}</td><td>{{ t.metric }}</td>
<td>{{ '%.3f'|format(t.base) }}</td><td>{{ '%.3f'|format(t.tuned) }}</td><td>{{ '%.3f'|format(t.merged) if t.merged is defined else '' }}</td></tr>
{% endfor %}</table>
{% if metrics_png %}<img alt="metrics per task" src="data:image/png;base64,{{ metrics_png }}">{% endif %}

<h2>Merge gate</h2>
<p>Method <b>{{ gate.method }}</b>: {% if gate.promote %}<span class="ok">promoted</span>, every task kept at least
{{ (gate.share * 100)|round|int }} % of its single-adapter gain.{% else %}<span class="bad">held back</span>; tasks below
{{ (gate.share * 100)|round|int }} % of their gain: {{ gate.failed|join(', ') }}.{% endif %} Served: <code>{{ gate.served }}</code>.</p>
<table><tr><th>method</th>{% for name in tasks %}<th>{{ name }}</th>{% endfor %}<th>gate</th></tr>
{% for m, v in merge.items() %}<tr><td>{{ m }}</td>{% for name in tasks %}<td>{{ '%.3f'|format(v.merged[name]) }}</td>{% endfor %}
<td class="{{ 'ok' if v.promote else 'bad' }}">{{ 'pass' if v.promote else 'fail' }}</td></tr>{% endfor %}</table>

{% if loss_png %}<h2>Training</h2><img alt="training loss" src="data:image/png;base64,{{ loss_png }}">{% endif %}

<h2>Serving (Triton)</h2>
<table><tr><th>model</th><th>p50 ms</th><th>p99 ms</th><th>min cosine vs in-process</th></tr>
<tr><td>{{ serving.model_id }}</td><td>{{ '%.2f'|format(serving.p50_ms) }}</td><td>{{ '%.2f'|format(serving.p99_ms) }}</td>
<td>{{ '%.5f'|format(serving.min_cosine_vs_in_process) }}</td></tr></table>

<h2>Drift ({{ drift.task }})</h2>
<table><tr><th>stream</th><th>MMD²</th><th>p-value</th><th>drift</th></tr>
{% for k in ['in_domain', 'shifted'] %}<tr><td>{{ k }}</td><td>{{ '%.5f'|format(drift[k].statistic) }}</td>
<td>{{ '%.4f'|format(drift[k].p_value) }}</td><td class="{{ 'bad' if drift[k].drift else 'ok' }}">{{ drift[k].drift }}</td></tr>{% endfor %}
</table>
{% if drift_png %}<img alt="drift p-values" src="data:image/png;base64,{{ drift_png }}">{% endif %}

<h2>Retrain</h2>
<p>{% if retrain.run_id %}Drift event accepted; retrain pipeline run <code>{{ retrain.run_id }}</code>: {{ retrain.state }}.
{% else %}No drift event was sent.{% endif %}</p>
"""


def _plots(s: dict) -> dict:
    import numpy as np

    plt = pyplot()

    pngs = {}
    tasks = s.get("tasks", {})
    if tasks:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        names = list(tasks)
        x = np.arange(len(names))
        for i, (key, color) in enumerate((("base", "#9aa5b1"), ("tuned", "#2f6fdf"), ("merged", "#f08c00"))):
            ax.bar(x + (i - 1) * 0.27, [tasks[n].get(key, np.nan) for n in names], 0.27, label=key, color=color)
        ax.set_xticks(x, [f"{n}\n({tasks[n].get('metric', '')})" for n in names], fontsize=8)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title("metric on the held-out split")
        pngs["metrics_png"] = png(fig)
    curves = s.get("curves", {})
    if curves:
        fig, ax = plt.subplots(figsize=(8, 3))
        for name, pts in curves.items():
            if pts:
                steps, losses = zip(*pts)
                ax.plot(steps, losses, label=name, lw=1)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        ax.set_title("training loss")
        pngs["loss_png"] = png(fig)
    drift = s.get("drift", {})
    if "in_domain" in drift:
        fig, ax = plt.subplots(figsize=(5, 2.6))
        keys = ["in_domain", "shifted"]
        vals = [max(drift[k]["p_value"], 1e-4) for k in keys]
        ax.bar(keys, vals, color=["#1a7f37" if not drift[k]["drift"] else "#b42318" for k in keys])
        ax.axhline(drift["in_domain"].get("alpha", 0.05), ls="--", color="#444", lw=1, label="alpha")
        ax.set_yscale("log")
        ax.set_ylabel("MMD p-value")
        ax.legend(fontsize=8)
        pngs["drift_png"] = png(fig)
    return pngs


def write_report(path: str | Path, summary: dict) -> Path:
    """Render the summary of a loop run into one self-contained HTML file."""
    total_s = summary.get("timings", {}).get("total_s", 0)
    return write_page(path, "taskloom report", TEMPLATE, **summary, total_s=total_s, **_plots(summary))
