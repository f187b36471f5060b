"""A fold model of `wsi train` is reused only when trained from the same inputs; heatmaps follow their models."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.mil.training import MILTrainConfig, cross_validate, load_mil_checkpoint
from sarcomakit.pathology.pipeline import slide_attention
from sarcomakit.pathology.wsi.h5io import save_features
from sarcomakit.pathology.wsi.slide_manifest import SlideManifest, load_slide_manifest

CLASSES = ("a", "b", "c")
DIM = 8
CONFIG = MILTrainConfig(model="abmil", epochs=3, lr=1e-3, val_fraction=0.0, seed=0)


def _features(rng: np.random.Generator, label: int) -> np.ndarray:
    bag = rng.normal(0, 1, (int(rng.integers(5, 15)), DIM))
    bag[:3, label] += 3.0
    return bag.astype(np.float32)


def _cohort(root: Path, n_slides: int = 12) -> Path:
    """One slide per patient, three classes; folds 0, 1, 2 in turn (column ``fold``)."""
    rng = np.random.default_rng(0)
    (root / "slides").mkdir(parents=True)
    rows = []
    for i in range(n_slides):
        slide_id = f"s{i:02d}"
        (root / "slides" / f"{slide_id}.svs").write_bytes(b"slide")
        features = _features(rng, i % 3)
        save_features(root / "features" / f"{slide_id}.h5", features, rng.integers(0, 500, (len(features), 2)),
                      {"size_level0": 64})
        rows.append({"slide_id": slide_id, "path": f"slides/{slide_id}.svs", "label": CLASSES[i % 3],
                     "patient_id": f"p{i}", "fold": i % 3})
    pd.DataFrame(rows).to_csv(root / "slides.csv", index=False)
    return root / "slides.csv"


def _with_folds(csv: Path, folds: list[int]) -> SlideManifest:
    frame = pd.read_csv(csv).assign(fold=folds)
    frame.to_csv(csv.with_name("refolded.csv"), index=False)
    return load_slide_manifest(csv.with_name("refolded.csv"), require_labels=True)


def _training_slides(run: Path, fold: int) -> set[str]:
    trained_on = load_mil_checkpoint(run / f"fold_{fold}" / "model.pt").training_slides
    assert trained_on is not None
    return trained_on


def test_rerun_with_other_folds_retrains_and_never_predicts_a_training_slide(tmp_path: Path) -> None:
    csv = _cohort(tmp_path)
    run = tmp_path / "run"
    cross_validate(load_slide_manifest(csv, require_labels=True), tmp_path / "features", run, CONFIG, n_boot=20)
    # the same slides in other folds: every old fold model trained on slides that are now held out
    refolded = _with_folds(csv, [(i // 3) % 3 for i in range(12)])
    result = cross_validate(refolded, tmp_path / "features", run, CONFIG, n_boot=20)
    assert sorted(result.retrained) == [0, 1, 2]
    assert "training slides" in result.retrained[0] and "added" in result.retrained[0]
    for fold, held_out in result.predictions.groupby("fold")["slide_id"]:
        assert not set(held_out) & _training_slides(run, int(fold))
    # and the out-of-fold predictions are those of a fresh run in a new folder
    fresh = cross_validate(refolded, tmp_path / "features", tmp_path / "fresh", CONFIG, n_boot=20)
    pd.testing.assert_frame_equal(result.predictions, fresh.predictions)


def test_same_inputs_reuse_and_changed_features_or_options_retrain(tmp_path: Path) -> None:
    csv = _cohort(tmp_path)
    manifest = load_slide_manifest(csv, require_labels=True)
    run = tmp_path / "run"
    cross_validate(manifest, tmp_path / "features", run, CONFIG, n_boot=20)
    stamps = {k: (run / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in range(3)}
    again = cross_validate(manifest, tmp_path / "features", run, CONFIG, n_boot=20)
    assert not again.retrained
    assert {k: (run / f"fold_{k}" / "model.pt").stat().st_mtime_ns for k in range(3)} == stamps

    # s04 (fold 1) is embedded again with other values: folds 0 and 2 trained on it, fold 1 held it out
    rng = np.random.default_rng(7)
    features = _features(rng, 1)
    save_features(tmp_path / "features" / "s04.h5", features, rng.integers(0, 500, (len(features), 2)),
                  {"size_level0": 64})
    changed = cross_validate(manifest, tmp_path / "features", run, CONFIG, n_boot=20)
    assert sorted(changed.retrained) == [0, 2] and "s04" in changed.retrained[0]

    longer = cross_validate(manifest, tmp_path / "features", run, replace(CONFIG, epochs=4), n_boot=20)
    assert sorted(longer.retrained) == [0, 1, 2] and "epochs: 3 then, 4 now" in longer.retrained[0]


def test_fewer_folds_remove_the_old_fold_models(tmp_path: Path) -> None:
    csv = _cohort(tmp_path)
    run = tmp_path / "run"
    cross_validate(load_slide_manifest(csv, require_labels=True), tmp_path / "features", run, CONFIG, n_boot=20)
    two = _with_folds(csv, [i % 2 for i in range(12)])
    cross_validate(two, tmp_path / "features", run, CONFIG, n_boot=20)
    assert sorted(p.name for p in run.glob("fold_*")) == ["fold_0", "fold_1"]


def test_attention_refuses_a_fold_model_that_trained_on_the_slide(tmp_path: Path) -> None:
    csv = _cohort(tmp_path)
    run = tmp_path / "run"
    cross_validate(load_slide_manifest(csv, require_labels=True), tmp_path / "features", run, CONFIG, n_boot=20)
    attention, coords, _ = slide_attention("s01", tmp_path, run)  # held out by fold 1: fine
    assert attention.shape == (len(coords),)
    # folds.csv rewritten by an interrupted rerun with other folds: s01 now points at fold 0, which trained on it
    folds = pd.read_csv(run / "folds.csv")
    folds.loc[folds["slide_id"] == "s01", "fold"] = 0
    folds.to_csv(run / "folds.csv", index=False)
    with pytest.raises(UserInputError, match="was trained on slide 's01'"):
        slide_attention("s01", tmp_path, run)


@pytest.mark.slow
def test_heatmaps_are_redone_when_their_fold_model_changes(tmp_path: Path) -> None:
    from sarcomakit.pathology.pipeline import FEATURES, TilingOptions, embed_step, heatmap_cohort, tile_cohort
    from sarcomakit.pathology.wsi.synthetic import make_synthetic_wsi_cohort

    csv = make_synthetic_wsi_cohort(tmp_path / "data", n_slides=4, seed=1, size=(1024, 768))
    manifest = load_slide_manifest(csv, require_labels=True)
    work = tmp_path / "work"
    tile_cohort(manifest, work, TilingOptions(target_mpp=1.0, tile_size=48, min_tissue=0.3), show_progress=False)
    embed_step(manifest, work, "small_cnn", encoder_options={"input_size": 48}, num_workers=0, show_progress=False)
    run = work / "mil" / "abmil"
    by_slide = [i % 2 for i in range(len(manifest))]
    cross_validate(_with_folds(csv, by_slide), work / FEATURES, run, CONFIG, n_boot=20)
    first = heatmap_cohort(manifest, work, run, top_k=2, show_progress=False)
    assert sorted(first.results) == manifest.ids and (work / "heatmaps" / "slide_000" / "source.json").is_file()
    assert sorted(heatmap_cohort(manifest, work, run, top_k=2, show_progress=False).skipped) == manifest.ids

    cross_validate(_with_folds(csv, [1 - f for f in by_slide]), work / FEATURES, run, CONFIG, n_boot=20)
    redone = heatmap_cohort(manifest, work, run, top_k=2, show_progress=False)
    assert sorted(redone.results) == manifest.ids and not redone.failures


def test_wsi_demo_refuses_a_folder_made_with_other_options(tmp_path: Path) -> None:
    from sarcomakit.pathology import pipeline

    pipeline._claim_demo_folder(tmp_path, pipeline.DemoOptions(), overwrite=False)
    pipeline._claim_demo_folder(tmp_path, pipeline.DemoOptions(workers=4), overwrite=False)  # loaders may change
    with pytest.raises(UserInputError, match=r"holds a demo made with other options \(folds: 3 then, 5 now\)"):
        pipeline.run_demo(tmp_path, pipeline.DemoOptions(folds=5))
    assert not (tmp_path / "data").exists()
    pipeline._claim_demo_folder(tmp_path, pipeline.DemoOptions(folds=5), overwrite=True)
