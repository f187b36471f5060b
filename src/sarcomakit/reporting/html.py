"""Self-contained HTML reports: one file with its tables, figures (embedded PNG) and style.

A report is a title, optional metadata (run settings, versions) and a list of
:class:`ReportSection`. The file needs nothing beside it, so it can be mailed or archived as is.
Text, tables and metadata are HTML-escaped; only ``ReportSection.html`` is inserted verbatim,
for callers that build their own markup.

Example:
    >>> import pandas as pd
    >>> section = ReportSection("Metrics", text="Held-out cases.", table=pd.DataFrame({"dice": [0.91]}))
    >>> write_html_report("report.html", "Segmentation", [section])  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import numbers
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text
from sarcomakit.evaluation.formatting import MISSING, format_number

_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
                ".gif": "image/gif"}


@dataclass
class ReportSection:
    """One section of a report, rendered in this order: text, table, figures, raw HTML.

    Attributes:
        title: the section heading.
        text: plain text; blank lines separate paragraphs.
        table: a table shown with its column names (and its index when it is not a plain range).
        figures: image files (PNG, JPEG, SVG) embedded in the page; the file name is the caption.
        html: trusted markup inserted as is.
    """

    title: str
    text: str = ""
    table: pd.DataFrame | None = None
    figures: list[Path] = field(default_factory=list)
    html: str = ""


def write_html_report(path: str | Path, title: str, sections: list[ReportSection], *, subtitle: str = "",
                      metadata: dict[str, Any] | None = None) -> Path:
    """Write one self-contained HTML report atomically.

    Args:
        path: the ``.html`` file to write.
        title: page title and main heading.
        sections: the report's sections, in order; a table of contents is added when there are
            more than two.
        subtitle: a line under the title.
        metadata: key/value pairs shown in a small table under the title.

    Returns:
        ``path``.

    Raises:
        UserInputError: a figure file is missing or not an image type a browser shows.
    """
    from sarcomakit import __version__

    anchors = _unique_anchors([section.title for section in sections])
    contents = ""
    if len(sections) > 2:
        items = "".join(f'<li><a href="#{anchor}">{_escape(s.title)}</a></li>'
                        for anchor, s in zip(anchors, sections, strict=True))
        contents = f"<nav><ol>{items}</ol></nav>"
    body = "\n".join(_render_section(section, anchor)
                     for section, anchor in zip(sections, anchors, strict=True))
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    template = Template(resources.files("sarcomakit.reporting").joinpath("templates/report.html")
                        .read_text(encoding="utf-8"))
    page = template.substitute(
        title=_escape(title),
        version=_escape(__version__),
        subtitle=f'<p class="subtitle">{_escape(subtitle)}</p>' if subtitle else "",
        metadata=_render_metadata(metadata) if metadata else "",
        contents=contents,
        sections=body,
        footer=f"Written by sarcomakit {_escape(__version__)} on {generated}.",
    )
    return write_text(path, page)


def format_table(table: pd.DataFrame) -> str:
    """A DataFrame as an escaped HTML table, numbers as :func:`~sarcomakit.evaluation.formatting.format_number`."""
    show_index = not isinstance(table.index, pd.RangeIndex) or table.index.name is not None
    return table.to_html(index=show_index, escape=True, border=0, na_rep=MISSING, float_format=format_number,
                         classes="data")


# ---------------------------------------------------------------------- internals
def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _render_section(section: ReportSection, anchor: str) -> str:
    parts = [f'<section id="{anchor}">', f"<h2>{_escape(section.title)}</h2>"]
    for paragraph in re.split(r"\n\s*\n", section.text.strip()):
        if paragraph.strip():
            lines = (_escape(line) for line in paragraph.strip().splitlines())
            parts.append("<p>" + "<br>".join(lines) + "</p>")
    if section.table is not None:
        parts.append(f'<div class="table-wrap">{format_table(section.table)}</div>')
    for figure in section.figures:
        parts.append(_render_figure(Path(figure)))
    if section.html:
        parts.append(section.html)
    parts.append("</section>")
    return "\n".join(parts)


def image_data_uri(path: Path) -> str:
    """The image file ``path`` as a ``data:`` URI a page can embed (PNG, JPEG, SVG or GIF)."""
    mime = _IMAGE_TYPES.get(path.suffix.lower())
    if mime is None:
        raise UserInputError("is not an image a report can embed.", path=path,
                             fix=f"give a figure in one of {', '.join(sorted(_IMAGE_TYPES))}.")
    if not path.is_file():
        raise UserInputError("figure not found.", path=path, fix="write the figure before the report.")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _render_figure(path: Path) -> str:
    caption = _escape(path.stem)
    return (f'<figure><img src="{image_data_uri(path)}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _render_metadata(metadata: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_escape(key)}</th><td>{_escape(_metadata_value(value))}</td></tr>"
                   for key, value in metadata.items())
    return f'<table class="metadata">{rows}</table>'


def _metadata_value(value: Any) -> str:
    if isinstance(value, numbers.Real) and not isinstance(value, bool | numbers.Integral):
        return f"{float(value):.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _unique_anchors(titles: list[str]) -> list[str]:
    anchors: list[str] = []
    for title in titles:
        base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
        anchor, k = base, 2
        while anchor in anchors:
            anchor, k = f"{base}-{k}", k + 1
        anchors.append(anchor)
    return anchors
