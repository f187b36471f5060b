"""Grade metrics against scikit-learn and analytic calibration cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix

from figure_checks import figure_shape, near_colour, read_png
from sarcomakit.evaluation.classification import (
    balanced_accuracy,
    binary_auc,
    confusion_matrix,
    expected_calibration_error,
    macro_ovr_auc,
    one_vs_rest_aucs,
    reliability_curve,
    roc_points,
    top_label_ece,
)
from sarcomakit.evaluation.grade import encode_grades, grade_metrics, high_grade_ece, high_vs_rest_auc


def predictions(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grades with an informative but noisy softmax; probabilities rounded so that scores tie."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.2, 0.3, 0.5])
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = np.round(proba, 2)
    proba[:, 2] = 1 - proba[:, 0] - proba[:, 1]
    return y, proba


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aucs_and_balanced_accuracy_match_sklearn(seed):
    y, proba = predictions(80, seed)
    assert high_vs_rest_auc(y, proba) == pytest.approx(roc_auc_score(y == 2, proba[:, 2]), abs=1e-12)
    assert macro_ovr_auc(y, proba) == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro"), abs=1e-12)
    expected = [roc_auc_score(y == k, proba[:, k]) for k in range(3)]
    np.testing.assert_allclose(one_vs_rest_aucs(y, proba), expected, atol=1e-12)
    assert balanced_accuracy(y, proba.argmax(1)) == pytest.approx(balanced_accuracy_score(y, proba.argmax(1)),
                                                                  abs=1e-12)
    np.testing.assert_array_equal(confusion_matrix(y, proba.argmax(1), 3),
                                  sklearn_confusion_matrix(y, proba.argmax(1), labels=[0, 1, 2]))


def test_unknown_grades_are_ignored_and_names_are_encoded():
    y, proba = predictions(30, 4)
    names = np.array(["low", "intermediate", "high"], dtype=object)[y].tolist()
    names[0] = None
    encoded = encode_grades(names)
    assert encoded[0] == -1 and list(encoded[1:]) == list(y[1:])
    assert high_vs_rest_auc(encoded, proba) == pytest.approx(roc_auc_score(y[1:] == 2, proba[1:, 2]))
    with pytest.raises(ValueError, match="unknown grade"):
        encode_grades(["grade 4"])


def test_single_class_gives_nan_not_an_error():
    assert math.isnan(binary_auc(np.ones(4, bool), np.arange(4.0)))
    y = np.zeros(5, int)
    proba = np.full((5, 3), 1 / 3)
    assert math.isnan(high_vs_rest_auc(y, proba))


def test_ece_analytic_case():
    # bin (0.8, 0.9]: 10 cases at 0.85, 6 right -> gap 0.25; bin (0.2, 0.3]: 10 cases at 0.25, 5 right -> gap 0.25.
    # bin (0.5, 0.6]: 20 cases at 0.55, 11 right -> gap 0; ECE = (10*0.25 + 10*0.25 + 0) / 40 = 0.125
    confidence = np.r_[np.full(10, 0.85), np.full(10, 0.25), np.full(20, 0.55)]
    outcome = np.r_[np.ones(6), np.zeros(4), np.ones(5), np.zeros(5), np.ones(11), np.zeros(9)]
    assert expected_calibration_error(confidence, outcome, n_bins=10) == pytest.approx(0.125)
    curve = reliability_curve(confidence, outcome, n_bins=10)
    assert curve["count"].sum() == 40 and curve["count"][8] == 10
    assert curve["observed_frequency"][8] == pytest.approx(0.6)
    assert curve["mean_confidence"][5] == pytest.approx(0.55)
    assert np.isnan(curve["observed_frequency"][0])


def test_perfectly_calibrated_predictions_have_small_ece_and_overconfident_ones_large():
    rng = np.random.default_rng(0)
    p_high = rng.uniform(size=20000)
    outcome = rng.uniform(size=p_high.size) < p_high
    y = np.where(outcome, 2, 0)
    proba = np.stack([1 - p_high, np.zeros_like(p_high), p_high], axis=1)
    assert high_grade_ece(y, proba) < 0.02
    # one-hot confident predictions that are right 70% of the time: top-label ECE = 0.3
    y_conf = rng.choice(3, size=1000)
    wrong = rng.uniform(size=1000) < 0.3
    predicted = np.where(wrong, (y_conf + 1) % 3, y_conf)
    assert top_label_ece(y_conf, np.eye(3)[predicted]) == pytest.approx(wrong.mean())


def test_grade_metrics_values_and_intervals():
    y, proba = predictions(120, 5)
    result = grade_metrics(y, proba, n_bootstrap=300, seed=1)
    assert result["auc_high_vs_rest"]["value"] == pytest.approx(roc_auc_score(y == 2, proba[:, 2]))
    assert result["n"]["value"] == 120
    for name in ("auc_high_vs_rest", "auc_macro_ovr", "auc_low", "balanced_accuracy", "ece_top_label", "ece_high"):
        entry = result[name]
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
        assert entry["ci_high"] - entry["ci_low"] > 0, name
    assert result["auc_high_vs_rest"]["value"] > 0.7
    np.testing.assert_equal(grade_metrics(y, proba, n_bootstrap=300, seed=1), result)
    points = grade_metrics(y, proba, n_bootstrap=0)
    assert math.isnan(points["auc_macro_ovr"]["ci_low"])
    assert points["auc_macro_ovr"]["value"] == result["auc_macro_ovr"]["value"]


def test_shape_errors_are_reported():
    with pytest.raises(ValueError, match="shape"):
        grade_metrics([0, 1], np.ones((3, 3)) / 3)
    with pytest.raises(ValueError, match="grade index"):
        grade_metrics([0, 5], np.ones((2, 3)) / 3)


def test_unknown_labels_are_left_out_of_every_count_and_bad_labels_raise():
    y, proba = predictions(50, 8)
    pred = proba.argmax(1)
    unknown = y.copy()
    unknown[:7] = -1
    np.testing.assert_array_equal(confusion_matrix(unknown, pred, 3),
                                  sklearn_confusion_matrix(y[7:], pred[7:], labels=[0, 1, 2]))
    assert balanced_accuracy(unknown, pred, 3) == pytest.approx(balanced_accuracy_score(y[7:], pred[7:]))
    assert macro_ovr_auc(unknown, proba) == pytest.approx(roc_auc_score(y[7:], proba[7:], multi_class="ovr"))
    assert math.isnan(balanced_accuracy(np.full(4, -1), np.zeros(4, int), 3))
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(y, np.where(pred == 2, 3, pred), 3)


def test_two_classes_follow_scikit_learns_binary_convention():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 40)
    p_one = np.round(np.clip(0.3 * y + rng.uniform(0, 0.7, 40), 0, 1), 1)  # rounded: ties
    proba = np.stack([1 - p_one, p_one], axis=1)
    assert macro_ovr_auc(y, proba) == binary_auc(y == 1, p_one) == pytest.approx(roc_auc_score(y, p_one))


def test_roc_points_match_sklearn(tmp_path):
    from sklearn.metrics import roc_curve

    y, proba = predictions(80, 6)
    fpr, tpr = roc_points(y == 2, proba[:, 2])
    expected_fpr, expected_tpr, _ = roc_curve(y == 2, proba[:, 2], drop_intermediate=False)
    np.testing.assert_allclose(fpr, expected_fpr)
    np.testing.assert_allclose(tpr, expected_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y == 2, proba[:, 2]))


def test_roc_and_reliability_figures_are_written(tmp_path):
    from sarcomakit.reporting.clinical_figures import plot_reliability_diagram, plot_roc_curves

    y, proba = predictions(60, 7)
    grades = np.array(["low", "intermediate", "high"], dtype=object)[y].tolist()
    grades[0] = None
    roc = read_png(plot_roc_curves(grades, proba, tmp_path / "roc.png"))
    assert roc.shape[:2] == figure_shape(4.8, 4.6, 120)
    for colour in ("#1f77b4", "#ff7f0e", "#2ca02c"):  # low, intermediate and high vs rest, each its own curve
        assert near_colour(roc, colour, 30).sum() > 100
    assert near_colour(roc, "#b3b3b3", 10).sum() > 50  # the chance diagonal (grey 0.7)

    reliability = read_png(plot_reliability_diagram(y, proba, tmp_path / "figures" / "reliability.png"))
    assert reliability.shape[:2] == figure_shape(4.8, 5.6, 120)
    curves, counts = reliability[: int(0.7 * reliability.shape[0])], reliability[int(0.78 * reliability.shape[0]):]
    for colour in ("#1f77b4", "#ff7f0e"):  # p(high) and top-label confidence: a curve above, count bars below
        assert near_colour(curves, colour, 30).sum() > 50
        assert near_colour(counts, colour, 30).sum() > 50
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["figures", "reliability.png", "roc.png"]
