"""Self-contained HTML pages a person opens: the loop, training, drift and validation reports.

One look and one way to inline a plot (a PNG in the page, so a report is one file that can be
mailed or archived), so each report module only says what it shows.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from taskloom.artifacts import write_text

STYLE = """
 body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1000px; color: #222; }
 h1 { margin-bottom: 0; } .sub { color: #666; margin-top: .2rem; }
 table { border-collapse: collapse; margin: 1rem 0; } th, td { padding: .3rem .8rem; border-bottom: 1px solid #ddd; text-align: right; }
 th:first-child, td:first-child { text-align: left; } .ok { color: #1a7f37; } .bad { color: #b42318; } code { font-size: .9em; }
 .text th, .text td { text-align: left; } tr.failed { background: #fdd; } tr.warn { background: #ffd; }
 img { max-width: 100%; }
"""


def page(title: str, body: str) -> str:
    """A whole page around `body` (HTML, already escaped); `title` is plain text."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def render(template: str, **values) -> str:
    """A jinja2 template rendered with autoescaping; a missing value renders empty instead of failing."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    return env.from_string(template).render(**values)


def write_page(path: str | Path, title: str, template: str, /, **values) -> Path:
    """Render `template` with `values` into a page at `path` (atomically, sha256 beside)."""
    return write_text(path, page(title, render(template, **values)))


def pyplot():
    """matplotlib.pyplot on the Agg backend: plots are drawn without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> str:
    """The figure as base64 PNG for `<img src="data:image/png;base64,...">`; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()
