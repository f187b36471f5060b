"""Slide-level metrics (the shared classification metrics) against scikit-learn and analytic cases; bootstrap
intervals over slides and over patients."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from sarcomakit.evaluation.bootstrap import bootstrap_metric
from sarcomakit.evaluation.classification import (
    balanced_accuracy,
    binary_auc,
    confusion_matrix,
    macro_ovr_auc,
    one_vs_rest_aucs,
)
from sarcomakit.pathology.analysis.metrics import classification_metrics, metrics_to_json


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    logits[:5] = np.round(logits[:5])  # some ties
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba


def test_against_scikit_learn(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    y, proba = predictions
    pred = proba.argmax(1)
    assert balanced_accuracy(y, pred, 3) == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert macro_ovr_auc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    for c in range(3):
        assert one_vs_rest_aucs(y, proba)[c] == pytest.approx(skm.roc_auc_score(y == c, proba[:, c]))
    np.testing.assert_array_equal(confusion_matrix(y, pred, 3), skm.confusion_matrix(y, pred, labels=[0, 1, 2]))


def test_binary_and_analytic_cases() -> None:
    assert binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert binary_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(binary_auc(np.array([1, 1]), np.array([0.1, 0.2])))
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    y = np.array([0, 1, 0, 1])
    assert macro_ovr_auc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))


def test_bootstrap_interval_contains_point_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 400):
        y = rng.integers(0, 2, n)
        score = y + rng.normal(0, 1.0, n)
        point, low, high = bootstrap_metric(lambda i, y=y, s=score: binary_auc(y[i], s[i]), n, n_resamples=300)
        assert low <= point <= high
        widths.append(high - low)
    assert widths[1] < widths[0]


def test_grouped_bootstrap_keeps_patients_together() -> None:
    # Patients of unequal size: p0 has 5 slides, p1..p4 one each. Resampling patients keeps every slide of
    # a drawn patient together, so a resample's size varies (5 to 25 rows); resampling slides always gives 9.
    groups = np.array([0, 0, 0, 0, 0, 1, 2, 3, 4])
    resamples: list[np.ndarray] = []

    def record(idx: np.ndarray) -> float:
        resamples.append(np.asarray(idx))
        return float(np.mean(groups[idx] == 0))  # share of rows from the large patient

    point, low, high = bootstrap_metric(record, len(groups), n_resamples=200, groups=groups)
    drawn = resamples[1:]  # the first call is the point estimate on all rows
    assert len(drawn) == 200
    for idx in drawn:
        counts = np.bincount(idx, minlength=len(groups))
        for patient in range(5):  # each slide of a patient is drawn as often as the patient
            assert len(set(counts[groups == patient])) == 1
        assert np.bincount(groups[idx], minlength=5)[0] % 5 == 0
    assert len({len(idx) for idx in drawn}) > 1
    # the share of the large patient jumps between 0 and 1 with patients, not around 5/9 with slides
    assert point == pytest.approx(5 / 9)
    assert low == 0.0 and high >= 5 / 6


@pytest.mark.parametrize("grouped", [False, True])
def test_one_bootstrap_pass_equals_a_pass_per_metric(predictions: tuple[np.ndarray, np.ndarray],
                                                     grouped: bool) -> None:
    # classification_metrics draws each resample once for all metrics; bootstrapping each metric on its own
    # with the same seed must give exactly the same intervals (same resamples, same percentile rule).
    y, proba = predictions
    groups = np.arange(y.size) // 2 if grouped else None
    out = classification_metrics(y, proba, ["a", "b", "c"], n_boot=120, seed=4, groups=groups)
    pred = proba.argmax(1)
    alone = {"macro_auc": lambda i: macro_ovr_auc(y[i], proba[i]),
             "balanced_accuracy": lambda i: balanced_accuracy(y[i], pred[i], 3)}
    for key, metric in alone.items():
        value, low, high = bootstrap_metric(metric, y.size, n_resamples=120, seed=4, groups=groups)
        assert (out[key].value, out[key].low, out[key].high) == (value, low, high), key
    value, low, high = bootstrap_metric(lambda i: confusion_matrix(y[i], pred[i], 3), y.size, n_resamples=120,
                                        seed=4, groups=groups)
    np.testing.assert_array_equal(out["confusion_matrix"], value)
    np.testing.assert_array_equal(out["confusion_matrix_ci_low"], low)
    np.testing.assert_array_equal(out["confusion_matrix_ci_high"], high)


def test_classification_metrics_report(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    y, proba = predictions
    out = classification_metrics(y, proba, ["a", "b", "c"], n_boot=200, seed=0)
    auc = out["macro_auc"]
    assert auc.low <= auc.value <= auc.high
    assert auc.value == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert set(out["per_class_auc"]) == {"a", "b", "c"}
    assert out["confusion_matrix"].sum() == 60
    assert np.all(out["confusion_matrix_ci_low"] <= out["confusion_matrix"])
    as_json = metrics_to_json(out)
    assert as_json["macro_auc"]["ci_low"] == auc.low


def test_report_tables_and_text(predictions: tuple[np.ndarray, np.ndarray]) -> None:
    from sarcomakit.pathology.analysis.report import confusion_table, format_metrics, metrics_table

    y, proba = predictions
    out = classification_metrics(y, proba, ["a", "b", "c"], n_boot=50, seed=0)
    table = metrics_table(out)
    assert list(table["metric"]) == ["balanced accuracy", "macro AUC", "AUC a", "AUC b", "AUC c"]
    assert table.loc[1, "value"] == pytest.approx(out["macro_auc"].value)
    confusion = confusion_table(out)
    assert confusion.loc["true a", "pred a"] == out["confusion_matrix"][0, 0]
    text = format_metrics(out, "title")
    auc = out["macro_auc"]
    assert text.startswith("title") and f"macro AUC: {auc.value:.3f} [{auc.low:.3f}, {auc.high:.3f}]" in text
