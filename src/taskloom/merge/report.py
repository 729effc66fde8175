"""A merge as a self-contained HTML page, written beside merge_report.json as merge_report.html: the
method and its parameters, each input with its task and weight, the heads carried over, and the layers
the merge moved most. What a person opens from the pipeline's merge step; the JSON keeps every number."""

from __future__ import annotations

from pathlib import Path

from taskloom.pages import write_page

TOP_LAYERS = 15  # the page lists this many layers, largest change first; merge_report.json has them all

TEMPLATE = """<h1>Merge: {{ r.method }}</h1>
<p class="sub">base {{ r.base_model }} · output {{ r.output }} · {{ r.layers_merged }} layers merged ·
total change ‖Δ‖ {{ "%.4f"|format(r.delta_norm) }} · {{ r.seconds }} s{% if r.started_at %} · {{ r.started_at }}{% endif %}</p>
<p>Parameters: <code>{{ parameters }}</code>{% if r.search %} · searched weights
<code>{{ r.search.weights }}</code> (then {{ r.search.final_method }}){% endif %}</p>
<h2>Inputs</h2>
<table><tr><th>task</th><th>type</th><th>weight</th><th>kind</th><th>rank</th><th>path</th></tr>
{% for a in r.adapters %}<tr><td>{{ a.task or "-" }}</td><td>{{ a.type or "-" }}</td><td>{{ a.weight }}</td>
<td>{{ a.kind }}</td><td>{{ a.r if a.r is defined and a.r is not none else "-" }}</td><td><code>{{ a.path }}</code></td></tr>
{% endfor %}</table>
{% if r.heads %}<h2>Heads</h2><table><tr><th>task</th><th>from</th></tr>
{% for task, src in r.heads.items() %}<tr><td>{{ task }}</td><td><code>{{ src }}</code></td></tr>{% endfor %}</table>{% endif %}
<h2>Largest changes</h2>
<table><tr><th>layer</th><th>‖Δ‖</th><th>‖W₀‖</th><th>‖Δ‖ / ‖W₀‖</th></tr>
{% for name, e in layers %}<tr><td><code>{{ name }}</code></td><td>{{ "%.4f"|format(e.delta_norm) }}</td>
<td>{{ "%.4f"|format(e.base_norm) if e.base_norm else "-" }}</td>
<td>{{ "%.5f"|format(e.delta_norm / e.base_norm) if e.base_norm else "-" }}</td></tr>{% endfor %}</table>
<p class="sub">{{ shown }} of {{ r.layers|length }} layers; every layer and the file digests are in merge_report.json.</p>
"""


def write_merge_report(path: str | Path, report: dict, top: int = TOP_LAYERS) -> Path:
    """The page of `report` (what `merge_adapters` returns) at `path`, atomically."""
    import json

    layers = sorted((report.get("layers") or {}).items(), key=lambda kv: -float(kv[1].get("delta_norm", 0.0)))
    return write_page(
        path,
        f"taskloom merge: {report['method']}",
        TEMPLATE,
        r=report,
        parameters=json.dumps(report.get("parameters") or {}, sort_keys=True),
        layers=layers[:top],
        shown=min(top, len(layers)),
    )
