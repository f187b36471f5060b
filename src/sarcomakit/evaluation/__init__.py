"""Evaluation: segmentation metrics in physical units, bootstrap intervals, cohort evaluation."""

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
