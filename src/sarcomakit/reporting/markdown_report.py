"""An experiment's ``comparison.md`` as a self-contained HTML report (``report.html`` beside it).

Every experiment writes its results once, as Markdown (tables with intervals, paired differences, figures
referenced by relative path), so that a reader sees the same numbers in a repository, a terminal and a browser.
This module renders that Markdown with markdown-it-py (CommonMark plus tables; raw HTML in the text is shown as
text, never inserted) inside the project's report page, and embeds each figure it references as a data URI, so
the page can be mailed or archived alone. Only figures inside the experiment folder are embedded; a reference
that leaves it, or names a missing file, is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from sarcomakit.core.errors import UserInputError
from sarcomakit.reporting.html import ReportSection, image_data_uri, write_html_report


def markdown_to_html(text: str, folder: Path) -> str:
    """``text`` (Markdown) as HTML, with the images it references (relative to ``folder``) embedded."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(text)
    for token in tokens:
        for child in token.children or []:
            if child.type == "image":
                child.attrSet("src", _embedded(str(child.attrGet("src") or ""), folder))
    return parser.renderer.render(tokens, parser.options, {})


def write_markdown_report(markdown_path: str | Path, html_path: str | Path | None = None, *, title: str,
                          metadata: dict[str, Any] | None = None) -> Path:
    """Render ``markdown_path`` into a self-contained HTML report (default: ``report.html`` beside it).

    Args:
        markdown_path: the experiment's Markdown (e.g. ``comparison.md``).
        html_path: the page to write (atomically).
        title: the page title.
        metadata: settings shown under the title (e.g. the experiment's ``experiment.json``).
    """
    source = Path(markdown_path)
    target = Path(html_path) if html_path is not None else source.with_name("report.html")
    body = markdown_to_html(source.read_text(encoding="utf-8"), source.parent)
    flat = {key: value for key, value in (metadata or {}).items() if not isinstance(value, (dict, list))}
    flat.update({key: ", ".join(map(str, value)) for key, value in (metadata or {}).items()
                 if isinstance(value, list)})
    return write_html_report(target, title, [ReportSection("Results", html=body)],
                             subtitle=f"from {source.name}", metadata=flat or None)


def _embedded(reference: str, folder: Path) -> str:
    """A data URI of the figure ``reference`` names inside ``folder``."""
    path = (folder / reference).resolve()
    if ":" in reference or not path.is_relative_to(folder.resolve()):  # a URL, a data URI, or ../
        raise UserInputError(f"the report references the figure {reference!r} outside the experiment folder.",
                             path=folder, fix="reference figures by a path inside the experiment folder.")
    return image_data_uri(path)
