"""Evaluation: metrics, bootstrap intervals and method comparisons (no plotting: see :mod:`sarcomakit.reporting`).

- metrics: ``metrics`` (segmentation, in mm), ``classification`` (AUC, confusion matrix, balanced
  accuracy, calibration; shared by radiology and pathology), ``grade``, ``survival``;
- ``bootstrap``: percentile intervals over cases or patients, paired differences; ``formatting``: how
  figures are written;
- ``segmentation``: evaluating predicted masks of a cohort;
- comparisons of methods on out-of-fold predictions: ``oof`` (the table), ``oof_source`` (its folder),
  ``task_data``, ``method_metrics``, ``paired_differences``, ``comparison_tables``, ``metric_catalogue``
  and ``comparison`` (the entry point).
"""

from sarcomakit.evaluation.bootstrap import (
    bootstrap_ci,
    bootstrap_indices,
    paired_bootstrap_difference,
    summarise,
)
from sarcomakit.evaluation.metrics import (
    METRIC_LABELS,
    METRIC_NAMES,
    dice,
    hausdorff_distance_95,
    segmentation_metrics,
    surface_dice,
    volume_difference,
)
from sarcomakit.evaluation.segmentation import SegmentationEvaluation, evaluate_case, evaluate_predictions

__all__ = [
    "METRIC_LABELS",
    "METRIC_NAMES",
    "SegmentationEvaluation",
    "bootstrap_ci",
    "bootstrap_indices",
    "dice",
    "evaluate_case",
    "evaluate_predictions",
    "hausdorff_distance_95",
    "paired_bootstrap_difference",
    "segmentation_metrics",
    "summarise",
    "surface_dice",
    "volume_difference",
]
