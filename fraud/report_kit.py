"""The one small kit both HTML reports are made with (the pipeline's `fraudctl report` and the monitor's
`fraudctl monitor report`): figures, tables, a self-contained page, and an atomic write.

Figures are matplotlib `Figure` objects made without pyplot, so drawing a report never touches pyplot's
global state or backend (safe inside a notebook); they are embedded as base64 PNG, so a page is one file.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td:first-child{text-align:left}.ok{color:#070}.bad{color:#b00}h2{margin-top:1.6em}
.small{font-size:.9em;color:#555}.none{color:#888}img{max-width:100%}"""


def figure(*grid: int, figsize: tuple[float, float], title: str | None = None) -> tuple[Any, Any]:
    """(figure, axes) of a new matplotlib Figure with `grid` subplots (none given: one axes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    axes = fig.subplots(*grid)
    if title is not None:
        axes.set_title(title)
    return fig, axes


def image(fig: Any, alt: str = "plot") -> str:
    """An <img> holding the figure as an inline PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def cell(value: Any) -> str:
    """A value as table text: floats to 4 significant digits (whole numbers >= 10 without decimals), NaN as –."""
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.0f}" if value.is_integer() and abs(value) >= 10 else f"{value:.4g}"
    return html.escape(str(value))


def table(headers: Sequence[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, parts: Iterable[str]) -> str:
    """A complete HTML document: `title` as <title> and <h1>, then `parts` (HTML) in order."""
    escaped = html.escape(title)
    return "\n".join([f"<!doctype html><html><head><meta charset='utf-8'><title>{escaped}</title>"
                      f"<style>{CSS}</style></head><body>", f"<h1>{escaped}</h1>", *parts, "</body></html>"])


def write_page(path: Path, text: str) -> Path:
    """Write `text` to `path` atomically (a reader never sees half a page)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
