"""Reporting: figures (segmentation overlays, metric distributions) and self-contained HTML reports."""

from sarcomakit.reporting.figures import metric_distribution_figure, overlay_figure, save_png
from sarcomakit.reporting.html import ReportSection, format_table, write_html_report
from sarcomakit.reporting.segmentation_report import (
    choose_overlay_cases,
    segmentation_sections,
    write_segmentation_report,
)

__all__ = ["ReportSection", "choose_overlay_cases", "format_table", "metric_distribution_figure", "overlay_figure",
           "save_png", "segmentation_sections", "write_html_report", "write_segmentation_report"]
