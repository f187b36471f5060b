"""Slide-level metrics against scikit-learn and analytic cases; bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from sarcomakit.pathology.metrics import (
    balanced_accuracy,
    binary_auc,
    bootstrap_ci,
    classification_metrics,
    confusion_matrix,
    macro_auc,
    metrics_to_json,
    per_class_auc,
)


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
    assert macro_auc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    for c in range(3):
        assert per_class_auc(y, proba)[c] == pytest.approx(skm.roc_auc_score(y == c, proba[:, c]))
    np.testing.assert_array_equal(confusion_matrix(y, pred, 3), skm.confusion_matrix(y, pred, labels=[0, 1, 2]))


def test_binary_and_analytic_cases() -> None:
    assert binary_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert binary_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(binary_auc(np.array([1, 1]), np.array([0.1, 0.2])))
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]])
    y = np.array([0, 1, 0, 1])
    assert macro_auc(y, proba) == pytest.approx(skm.roc_auc_score(y, proba[:, 1]))


def test_bootstrap_interval_contains_point_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (40, 400):
        y = rng.integers(0, 2, n)
        score = y + rng.normal(0, 1.0, n)
        point, low, high = bootstrap_ci(lambda i, y=y, s=score: binary_auc(y[i], s[i]), n, n_boot=300)
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

    point, low, high = bootstrap_ci(record, len(groups), n_boot=200, groups=groups)
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
    from sarcomakit.pathology.report import confusion_table, format_metrics, metrics_table

    y, proba = predictions
    out = classification_metrics(y, proba, ["a", "b", "c"], n_boot=50, seed=0)
    table = metrics_table(out)
    assert list(table["metric"]) == ["balanced accuracy", "macro AUC", "AUC a", "AUC b", "AUC c"]
    assert table.loc[1, "value"] == pytest.approx(out["macro_auc"].value)
    confusion = confusion_table(out)
    assert confusion.loc["true a", "pred a"] == out["confusion_matrix"][0, 0]
    text = format_metrics(out, "title")
    assert text.startswith("title") and f"macro AUC: {out['macro_auc'].value:.3f} (95% CI" in text
