"""Reporting: figures (segmentation overlays, metric distributions) and self-contained HTML reports."""

from sarcomakit.reporting.figures import metric_distribution_figure, overlay_figure, save_png
from sarcomakit.reporting.html import ReportSection, format_table, write_html_report

__all__ = ["ReportSection", "format_table", "metric_distribution_figure", "overlay_figure", "save_png",
           "write_html_report"]
