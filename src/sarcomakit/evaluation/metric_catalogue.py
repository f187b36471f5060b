"""The metrics a method comparison reports: how each is labelled, which task it belongs to, which
direction is better, and the order they are listed in."""

from __future__ import annotations

from dataclasses import dataclass

from sarcomakit.evaluation.survival import TD_AUC_PREFIX


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown and compared: its label, task, and which direction is better (None: neither)."""

    label: str
    task: str
    higher_is_better: bool | None


METRICS: dict[str, MetricInfo] = {
    "dice_mean": MetricInfo("Dice (mean)", "segmentation", True),
    "hd95_mean": MetricInfo("HD95, mm (mean)", "segmentation", False),
    "auc_macro_ovr": MetricInfo("Grade AUC, macro one-vs-rest", "grade", True),
    "auc_high_vs_rest": MetricInfo("Grade AUC, high vs rest", "grade", True),
    "balanced_accuracy": MetricInfo("Grade balanced accuracy", "grade", True),
    "ece_top_label": MetricInfo("Grade ECE, top label", "grade", False),
    "ece_high": MetricInfo("Grade ECE, p(high)", "grade", False),
    "c_index_harrell": MetricInfo("Harrell's C-index", "survival", True),
    "c_index_uno": MetricInfo("Uno's C-index (IPCW)", "survival", True),
    "td_auc_mean": MetricInfo("Time-dependent AUC, mean", "survival", True),
    "integrated_brier_score": MetricInfo("Integrated Brier score", "survival", False),
    "logrank_p": MetricInfo("Log-rank p, low vs high risk", "survival", None),
}
#: the grade metrics compared between methods (the per-class AUCs are left to the grade report)
COMPARED_GRADE_METRICS: tuple[str, ...] = tuple(name for name, info in METRICS.items() if info.task == "grade")


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of a metric name, including ``td_auc@<days>`` ones."""
    if name.startswith(TD_AUC_PREFIX):
        return MetricInfo(f"Time-dependent AUC at {name[len(TD_AUC_PREFIX):]} days", "survival", True)
    return METRICS[name]


def metric_order(name: str) -> tuple[int, float]:
    """Sort key putting metrics in the order of :data:`METRICS` (per-time AUCs by time, before their mean)."""
    names = list(METRICS)
    if name.startswith(TD_AUC_PREFIX):
        return names.index("td_auc_mean"), float(name[len(TD_AUC_PREFIX):]) - 1e12
    return (names.index(name), 0.0) if name in names else (len(names), 0.0)
