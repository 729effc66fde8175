"""One training run as a self-contained HTML page: the loss curve (raw and smoothed, per task for a
mix), throughput over the steps, and base vs tuned on each eval split. Written as `out/report.html`."""

from __future__ import annotations

from pathlib import Path

from taskloom.pages import png, pyplot, write_page

TEMPLATE = """<h1>Training run: {{ title }}</h1>
<p>{{ m.steps }} steps on {{ m.base_model }} (rank {{ m.rank }}), {{ m.train_seconds }} s,
{{ "{:,.0f}".format(m.tokens_per_s) }} useful tokens/s, {{ m.world_size }} process(es) on {{ m.device }}.</p>
<table><tr><th>task</th><th>metric</th><th>base</th><th>tuned</th><th>eval loss: base → tuned</th></tr>
{% for name, t in tasks.items() %}<tr><td>{{ name }}</td><td>{{ t.metric }}</td><td>{{ "%.4f"|format(t.base) }}</td>
<td>{{ "%.4f"|format(t.tuned) }}</td><td>{{ "%.4f"|format(t.base_eval_loss) }} → {{ "%.4f"|format(t.eval_loss) }}</td></tr>
{% endfor %}</table>
<h2>Loss</h2><img alt="training loss" src="data:image/png;base64,{{ loss_png }}">
<h2>Throughput</h2><img alt="tokens per second" src="data:image/png;base64,{{ speed_png }}">
"""


def _smooth(values: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def write_train_report(path: str | Path, metrics: dict, records: list[dict]) -> Path:
    plt = pyplot()
    k = max(1, len(records) // 20)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["tasks"][0] if "tasks" in r else metrics["task"], []).append(r)
    for name, rs in groups.items():
        line = ax.plot([r["step"] for r in rs], [r["loss"] for r in rs], lw=0.6, alpha=0.35)[0]
        ax.plot(
            [r["step"] for r in rs], _smooth([r["loss"] for r in rs], k), lw=1.6, color=line.get_color(), label=name
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    loss_png = png(fig)
    fig, ax = plt.subplots(figsize=(8, 2.4))
    ax.plot([r["step"] for r in records], _smooth([r["tokens_per_s"] for r in records], k), lw=1.2, color="#2f6fdf")
    ax.set_xlabel("step")
    ax.set_ylabel("useful tokens/s")
    speed_png = png(fig)
    tasks = metrics["tasks"] if "tasks" in metrics else {metrics["task"]: metrics}
    return write_page(
        path,
        f"taskloom train: {metrics['task']}",
        TEMPLATE,
        title=metrics["task"],
        m=metrics,
        tasks=tasks,
        loss_png=loss_png,
        speed_png=speed_png,
    )
