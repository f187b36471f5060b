"""An experiment's Markdown rendered as a self-contained HTML page: tables, embedded figures, escaped text."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.reporting.markdown_report import write_markdown_report

MARKDOWN = """# Comparison

| method | Dice [95% CI] |
| --- | --- |
| fixed | 70.9 [59.1, 79.8] |
| roi_box <script>alert(1)</script> | 71.3 [60.0, 80.1] |

![Dice per arm](figures/dice.png)
"""


def _experiment(tmp_path: Path, markdown: str = MARKDOWN) -> Path:
    (tmp_path / "figures").mkdir()
    figure, axes = plt.subplots(figsize=(2, 2))
    axes.plot([0, 1], [0, 1])
    figure.savefig(tmp_path / "figures" / "dice.png")
    plt.close(figure)
    path = tmp_path / "comparison.md"
    path.write_text(markdown, encoding="utf-8")
    return path


def test_tables_and_figures_land_in_one_self_contained_page(tmp_path: Path) -> None:
    source = _experiment(tmp_path)
    page = write_markdown_report(source, title="Experiment", metadata={"seed": 0, "arms": ["fixed", "roi"]})
    assert page == tmp_path / "report.html"
    html = page.read_text(encoding="utf-8")
    assert "<table>" in html and "<td>70.9 [59.1, 79.8]</td>" in html
    embedded = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="Dice per arm"', html)
    assert embedded and base64.b64decode(embedded[1]) == (tmp_path / "figures" / "dice.png").read_bytes()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # text, not markup
    assert "fixed, roi" in html  # the settings under the title
    assert "figures/dice.png" not in html  # nothing left to fetch beside the page


@pytest.mark.parametrize("reference", ["../outside.png", "/etc/hostname", "https://example.org/x.png",
                                       "figures/missing.png", "comparison.md"])
def test_figures_outside_the_folder_missing_or_not_images_are_refused(tmp_path: Path, reference: str) -> None:
    source = _experiment(tmp_path, f"![figure]({reference})\n")
    (tmp_path.parent / "outside.png").write_bytes(b"\x89PNG")
    with pytest.raises(UserInputError):
        write_markdown_report(source, title="Experiment")
    assert not (tmp_path / "report.html").exists()


def test_the_report_command_renders_an_experiments_comparison_md(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from sarcomakit.cli.main import app

    _experiment(tmp_path)
    (tmp_path / "experiment.json").write_text(json.dumps({"seed": 3, "methods": ["scratch", "mae"]}),
                                              encoding="utf-8")
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "page.html")])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert "<td>71.3 [60.0, 80.1]</td>" in html and "data:image/png;base64," in html and "scratch, mae" in html
    (tmp_path / "figures" / "dice.png").unlink()  # a figure gone: one line, exit 2, no page
    again = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "again.html")])
    assert again.exit_code == 2 and "dice.png" in again.output and not (tmp_path / "again.html").exists()
