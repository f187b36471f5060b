"""MIL training: slide manifest validation, patient-grouped folds, CV on feature bags, resume, prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.mil.training import (
    MILTrainConfig,
    cross_validate,
    find_checkpoints,
    load_bag,
    make_patient_folds,
    predict_slides,
    train_mil,
)
from sarcomakit.pathology.wsi.h5io import save_features
from sarcomakit.pathology.wsi.slide_manifest import load_slide_manifest, load_slides

CLASSES = ("a", "b", "c")
DIM = 16


def _bag(rng: np.random.Generator, label: int, n: int) -> np.ndarray:
    """Background instances plus a few key instances whose direction encodes the class."""
    bag = rng.normal(0, 1, (n, DIM))
    key = rng.choice(n, size=max(2, n // 5), replace=False)
    bag[key, label] += 3.0
    return bag.astype(np.float32)


def _cohort(tmp_path: Path, n_patients: int = 12, empty: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    (tmp_path / "slides").mkdir()
    rows = []
    index = 0
    for patient in range(n_patients):
        label = patient % 3
        for _ in range(1 + patient % 2):
            slide_id = f"s{index:02d}"
            (tmp_path / "slides" / f"{slide_id}.svs").write_bytes(b"slide")
            n = int(rng.integers(5, 40))
            features = np.zeros((0, DIM), np.float32) if slide_id == empty else _bag(rng, label, n)
            save_features(tmp_path / "features" / f"{slide_id}.h5", features,
                          rng.integers(0, 1000, (len(features), 2)), {"size_level0": 64})
            rows.append({"slide_id": slide_id, "path": f"slides/{slide_id}.svs", "label": CLASSES[label],
                         "patient_id": f"p{patient}"})
            index += 1
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    return tmp_path / "slides.csv"


def test_manifest_validation_names_the_slide(tmp_path: Path) -> None:
    csv = _cohort(tmp_path, n_patients=3)
    manifest = load_slide_manifest(csv, require_labels=True)
    assert manifest.classes == list(CLASSES) and len(manifest) == 4
    assert manifest.slides[0].path == (tmp_path / "slides" / "s00.svs").resolve()
    frame = pd.read_csv(csv)
    pd.concat([frame, frame.iloc[[1]]]).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(UserInputError, match="'s01' is listed twice"):
        load_slide_manifest(tmp_path / "dup.csv")
    with pytest.raises(UserInputError, match="slide 's03' has label 'c', not in the class list"):
        load_slide_manifest(csv, classes=["a", "b"])
    frame.assign(path=frame["path"].where(frame["slide_id"] != "s03", "slides/gone.svs")).to_csv(
        tmp_path / "missing.csv", index=False)
    with pytest.raises(UserInputError, match="file of slide 's03' not found"):
        load_slide_manifest(tmp_path / "missing.csv")
    frame.drop(columns=["path"]).to_csv(tmp_path / "nopath.csv", index=False)
    with pytest.raises(UserInputError, match="lacks column"):
        load_slide_manifest(tmp_path / "nopath.csv")
    folder = load_slides(tmp_path / "slides")
    assert folder.ids == ["s00", "s01", "s02", "s03"] and folder.slides[0].label is None


def test_folds_are_grouped_by_patient_and_honour_given_folds(tmp_path: Path) -> None:
    manifest = load_slide_manifest(_cohort(tmp_path), require_labels=True)
    folds = make_patient_folds(manifest, n_folds=3, seed=0)
    by_patient: dict[str, set[int]] = {}
    for slide in manifest.slides:
        by_patient.setdefault(slide.patient_id, set()).add(folds[slide.slide_id])
    assert all(len(f) == 1 for f in by_patient.values())
    assert sorted(set(folds.values())) == [0, 1, 2]
    frame = pd.read_csv(tmp_path / "slides.csv").assign(fold=lambda f: np.arange(len(f)) % 2)
    frame.to_csv(tmp_path / "folded.csv", index=False)
    given = make_patient_folds(load_slide_manifest(tmp_path / "folded.csv"), n_folds=5)
    assert list(given.values()) == list(np.arange(len(frame)) % 2)
    with pytest.raises(UserInputError, match="cannot fill"):
        make_patient_folds(manifest, n_folds=50)


def test_train_mil_learns_key_instances_and_stops_early() -> None:
    rng = np.random.default_rng(1)
    labels = [i % 3 for i in range(24)]
    bags = [torch.as_tensor(_bag(rng, y, 20)) for y in labels]
    config = MILTrainConfig(epochs=12, lr=2e-3, patience=3, seed=0)
    trained = train_mil(bags[:18], labels[:18], 3, config, bags[18:], labels[18:])
    assert len(trained.history) <= 12 and trained.best_epoch >= 1
    assert trained.history[-1]["train_loss"] < trained.history[0]["train_loss"]
    with torch.no_grad():
        preds = [int(trained.model(b)["logits"].argmax()) for b in bags[18:]]
    assert np.mean(np.array(preds) == np.array(labels[18:])) >= 0.8


@pytest.mark.parametrize("model", ["abmil", "clam_sb"])
def test_cross_validation_outputs_resume_and_predict(tmp_path: Path, model: str) -> None:
    csv = _cohort(tmp_path, empty="s05")
    manifest = load_slide_manifest(csv, require_labels=True)
    config = MILTrainConfig(model=model, epochs=20, lr=1e-3, val_fraction=0.0, seed=0)
    result = cross_validate(manifest, tmp_path / "features", tmp_path / "run", config, n_folds=3, n_boot=100)
    assert "s05" in result.failures and "empty bag" in result.failures["s05"]
    oof = pd.read_csv(tmp_path / "run" / "oof_predictions.csv")
    assert len(oof) == len(manifest) - 1 and "s05" not in set(oof["slide_id"])
    assert {"slide_id", "patient_id", "label", "fold", "prediction", "prob_a", "prob_b", "prob_c"} <= set(oof)
    np.testing.assert_allclose(oof[["prob_a", "prob_b", "prob_c"]].sum(axis=1), 1.0, atol=1e-5)
    assert result.metrics["macro_auc"].value >= 0.85
    assert result.metrics["macro_auc"].low <= result.metrics["macro_auc"].value
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["model"] == model and saved["n_folds"] == 3 and set(saved["failures"]) == {"s05"}
    assert saved["macro_auc"]["value"] == pytest.approx(result.metrics["macro_auc"].value)
    assert saved["macro_auc"]["value"] == pytest.approx(  # the out-of-fold predictions' AUC, by scikit-learn
        roc_auc_score(oof["label"], oof[["prob_a", "prob_b", "prob_c"]].to_numpy(), multi_class="ovr"))
    checkpoints = find_checkpoints(tmp_path / "run")
    assert len(checkpoints) == 3
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    again = cross_validate(manifest, tmp_path / "features", tmp_path / "run", config, n_folds=3, n_boot=50)
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps  # resumed: no fold retrained
    pd.testing.assert_frame_equal(again.predictions, result.predictions)
    table, outcome = predict_slides(checkpoints, manifest, tmp_path / "features", tmp_path / "pred.csv")
    assert set(outcome.failures) == {"s05"} and len(table) == len(manifest) - 1
    written = pd.read_csv(tmp_path / "pred.csv")
    pd.testing.assert_frame_equal(written, table, check_dtype=False)
    assert set(written["slide_id"]) == {s.slide_id for s in manifest.slides} - {"s05"}
    np.testing.assert_allclose(written[["prob_a", "prob_b", "prob_c"]].sum(axis=1), 1.0, atol=1e-5)
    assert len(outcome.results["s00"]) == len(load_bag(tmp_path / "features" / "s00.h5")[0])


def test_missing_features_are_reported_per_slide(tmp_path: Path) -> None:
    csv = _cohort(tmp_path)
    (tmp_path / "features" / "s01.h5").unlink()
    with pytest.raises(UserInputError, match="no feature file for slide 's01'"):
        load_bag(tmp_path / "features" / "s01.h5", "s01")
    manifest = load_slide_manifest(csv)
    result = cross_validate(manifest, tmp_path / "features", tmp_path / "run",
                            MILTrainConfig(epochs=3, seed=0), n_folds=3, n_boot=20)
    assert list(result.failures) == ["s01"] and len(result.predictions) == len(manifest) - 1
