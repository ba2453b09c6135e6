"""One self-contained HTML page: figures inlined as SVG, tables as HTML, no scripts, no network."""

from __future__ import annotations

import re
from pathlib import Path

from jinja2 import Environment, select_autoescape

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }}</title>
<style>
 body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
 figure { margin: 1.5em 0; } figure svg { max-width: 100%; height: auto; display: block; }
 figcaption { color: #555; font-size: 13px; }
 table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
 th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
 th:first-child, td:first-child, td.text { text-align: left; }
 .small { color: #666; font-size: 12px; }
</style></head>
<body>
<h1>{{ title }}</h1>
<p class="small">{{ subtitle }}</p>
{% if findings %}<section id="findings">{% for f in findings %}<p>{{ f }}</p>{% endfor %}</section>{% endif %}
{% for fig in figures %}
<figure id="{{ fig.id }}" class="figure">
{{ fig.svg | safe }}
<figcaption>{{ fig.caption }} (<a href="{{ fig.id }}.png">PNG</a>, <a href="{{ fig.id }}.svg">SVG</a>)</figcaption>
</figure>
{% endfor %}
{% for table in tables %}
<h2>{{ table.title }}</h2>
{% if table.note %}<p class="small">{{ table.note }}</p>{% endif %}
<table id="{{ table.id }}"><thead><tr>{% for h in table.header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in table.rows %}<tr>{% for cell in row %}<td{% if loop.last and table.text_last %} class="text"{% endif %}>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</tbody>
</table>
{% endfor %}
</body></html>
"""

_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
_PROLOG = re.compile(r"^.*?(?=<svg)", re.DOTALL)


def inline_svg(path: Path) -> str:
    """The SVG element alone (no XML prolog or doctype), ready to inline."""
    return _PROLOG.sub("", path.read_text(), count=1)


def page(out: Path, title: str, subtitle: str, figures: list[dict], tables: list[dict],
         findings: list[str] | None = None) -> Path:
    """figures: {id, svg (path), caption}; tables: {id, title, header, rows, note?, text_last?};
    findings: sentences shown first, in words (which differences are significant, and which are not)."""
    figs = [{**f, "svg": inline_svg(f["svg"])} for f in figures]
    html = _ENV.from_string(_PAGE).render(title=title, subtitle=subtitle, figures=figs, tables=tables,
                                          findings=findings or [])
    path = out / "index.html"
    path.write_text(html)
    return path
