"""Self-contained HTML reports: tables escaped, figures embedded, atomic writing."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.reporting.figures import overlay_figure
from sarcomakit.reporting.html import ReportSection, write_html_report


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        self._in_cell = tag in ("td", "th")

    def handle_endtag(self, tag):
        self._in_cell = False

    def handle_data(self, data):
        if self._in_cell and data.strip():
            self.cells.append(data.strip())


@pytest.fixture
def figure(tmp_path):
    image = np.random.default_rng(0).normal(size=(8, 20, 20))
    mask = np.zeros(image.shape, bool)
    mask[3:6, 5:12, 6:14] = True
    return overlay_figure(image, mask, mask, tmp_path / "case_01_overlay.png", title="case_01")


def test_report_contains_the_table_and_embedded_images(tmp_path, figure):
    table = pd.DataFrame({"case_id": ["case_01", "<script>alert(1)</script>"], "dice": [0.91234, np.nan]})
    sections = [
        ReportSection("Metrics", text="Held-out cases.\n\nSecond paragraph & more.", table=table),
        ReportSection("Overlays", figures=[figure]),
        ReportSection("Notes", html="<p class='custom'>kept as is</p>"),
    ]
    path = write_html_report(tmp_path / "report.html", "Segmentation <demo>", sections, subtitle="synthetic",
                             metadata={"epochs": 3, "spacing": (1.0, 0.8, 0.8)})
    text = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)

    assert "<script>" not in text  # table cells are escaped
    assert "&lt;script&gt;" in text and "Segmentation &lt;demo&gt;" in text
    assert {"case_01", "0.912", "–", "epochs", "1.0, 0.8, 0.8"} <= set(parser.cells)
    assert "<p class='custom'>kept as is</p>" in text
    assert len(parser.images) == 1 and parser.images[0].startswith("data:image/png;base64,")
    embedded = base64.b64decode(parser.images[0].split(",", 1)[1])
    assert embedded == figure.read_bytes()
    assert 'href="#metrics"' in text and 'id="overlays"' in text  # table of contents
    assert not re.search(r'src="(?!data:)', text)  # nothing outside the file is referenced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_or_unsupported_figure_is_a_user_error(tmp_path):
    with pytest.raises(UserInputError, match="figure not found"):
        write_html_report(tmp_path / "r.html", "t", [ReportSection("s", figures=[tmp_path / "nope.png"])])
    (tmp_path / "data.csv").write_text("a\n")
    with pytest.raises(UserInputError, match="embed"):
        write_html_report(tmp_path / "r.html", "t", [ReportSection("s", figures=[tmp_path / "data.csv"])])
    assert not (tmp_path / "r.html").exists()
