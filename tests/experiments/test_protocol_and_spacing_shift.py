"""Experiments plan each fold on its training cases only; the spacing-shift copies have the geometry they claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.io.image import read_image, write_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.experiments.protocol import plan_training_cases, without_model_selection
from sarcomakit.experiments.spacing_shift import slice_axis, spacing_shift_folds, thick_slice_cohort, thicken
from sarcomakit.runs.config import TrainConfig


def test_fold_plan_reads_training_cases_only_and_replans_when_they_change(tiny_cohort: Manifest,
                                                                          tmp_path: Path) -> None:
    ids = tiny_cohort.case_ids
    train_ids, held_out = ids[:-1], ids[-1]
    plan, fingerprint = plan_training_cases(tiny_cohort, train_ids, tmp_path / "plan", num_samples_per_case=200)
    assert sorted(c.case_id for c in fingerprint.cases) == sorted(train_ids)

    # a held-out case changed: the plan is reused as it is (it never read that case)
    held = tiny_cohort[held_out]
    image = read_image(held.images[tiny_cohort.channels[0]])
    write_image(sitk.Cast(image, sitk.sitkFloat32) * 5.0, held.images[tiny_cohort.channels[0]])
    stamp = (tmp_path / "plan" / "plan.json").stat().st_mtime_ns
    assert plan_training_cases(tiny_cohort, train_ids, tmp_path / "plan", num_samples_per_case=200)[0] == plan
    assert (tmp_path / "plan" / "plan.json").stat().st_mtime_ns == stamp

    # a training case's spacing changed: planned again, from the new file
    first = tiny_cohort[train_ids[0]]
    for path in [*first.images.values(), first.label]:
        image = read_image(path)
        image.SetSpacing([s * 2 for s in image.GetSpacing()])
        write_image(image, path)
    _, again = plan_training_cases(tiny_cohort, train_ids, tmp_path / "plan", num_samples_per_case=200)
    assert again.cases[[c.case_id for c in again.cases].index(first.case_id)].spacing != \
        fingerprint.cases[[c.case_id for c in fingerprint.cases].index(first.case_id)].spacing


def test_experiments_keep_the_last_epoch() -> None:
    assert without_model_selection(TrainConfig()).checkpoint_selection == "last"


def _image(values: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -5.0, 3.0))
    return image


def test_thicken_triples_the_slice_spacing_and_averages_across_slices() -> None:
    values = np.zeros((30, 8, 8), np.float32)
    values[::2] = 1.0  # alternating slices: a thick slice sees their average
    image = _image(values, (0.8, 0.8, 1.0))
    thick = thicken(image, 3.0)
    assert slice_axis(image) == 2
    assert thick.GetSpacing() == (0.8, 0.8, 3.0) and thick.GetSize() == (8, 8, 10)
    assert thick.GetOrigin() == image.GetOrigin() and thick.GetDirection() == image.GetDirection()
    inner = sitk.GetArrayFromImage(thick)[2:-2]
    assert np.allclose(inner, 0.5, atol=0.05)  # subsampling alone would give all ones

    label = np.zeros((30, 8, 8), np.uint8)
    label[9:21, 2:6, 2:6] = 1
    thick_label = thicken(_image(label, (0.8, 0.8, 1.0)), 3.0, is_label=True)
    array = sitk.GetArrayFromImage(thick_label)
    assert set(np.unique(array)) == {0, 1} and thick_label.GetPixelID() == sitk.sitkUInt8
    assert array[3:7].all(axis=0)[2:6, 2:6].all() and not array[:3].any()  # slices 9..20 -> thick 3..6


def test_spacing_shift_folds_cross_thickness_and_never_share_a_patient(tiny_cohort: Manifest,
                                                                       tmp_path: Path) -> None:
    thick = thick_slice_cohort(tiny_cohort, tmp_path / "thick", 3.0)
    assert thick.case_ids == [c + "-thick" for c in tiny_cohort.case_ids]
    original = read_image(tiny_cohort.cases[0].images[tiny_cohort.channels[0]])
    copy = read_image(thick.cases[0].images[tiny_cohort.channels[0]])
    axis = slice_axis(original)
    assert np.isclose(copy.GetSpacing()[axis], 3 * original.GetSpacing()[axis])
    folds = spacing_shift_folds(tiny_cohort, seed=0)
    assert len(folds) == 2
    thin_to_thick, thick_to_thin = folds
    assert all(not c.endswith("-thick") for c in thin_to_thick["train"] + thick_to_thin["val"])
    assert all(c.endswith("-thick") for c in thin_to_thick["val"] + thick_to_thin["train"])
    for fold in folds:
        patients = [{c.removesuffix("-thick") for c in fold[side]} for side in ("train", "val")]
        assert not patients[0] & patients[1]
    validated = [c.removesuffix("-thick") for fold in folds for c in fold["val"]]
    assert sorted(validated) == sorted(tiny_cohort.case_ids)  # each patient validated exactly once


def test_learnt_figure_draws_the_checkpoint_layers_not_their_initial_state(tmp_path: Path) -> None:
    import json

    import torch

    from sarcomakit.experiments.learnt_figures import _window_curves, learnt_intensity_figure, learnt_intensity_layers
    from sarcomakit.runs.checkpoint import save_checkpoint

    run = tmp_path / "runs" / "window" / "split_0"
    (run / "fold_0").mkdir(parents=True)
    spec = {"layer": "window", "channels": [1], "low": [-100.0], "high": [300.0], "mean": [50.0], "std": [80.0]}
    (run / "config.json").write_text(json.dumps({"network_options": {"input_layers": [spec]}}))
    (run / "plan.json").write_text(json.dumps({"channels": ["T1", "CT"]}))
    state = {"input_layers.0.level": torch.tensor([20.0]), "input_layers.0.log_width": torch.log(torch.tensor([100.0])),
             "input_layers.0.centre": torch.tensor([50.0]), "input_layers.0.scale": torch.tensor([80.0]),
             "backbone.weight": torch.zeros(1)}
    save_checkpoint(run / "fold_0" / "checkpoint_best.pt", {"model": state})
    [(name, layer, initial)] = learnt_intensity_layers(run)
    assert name == "window"
    low, high = (float(b[0].detach()) for b in layer.window_bounds())
    assert np.allclose((low, high), (-30.0, 70.0))  # the checkpoint's window, not the plan's [-100, 300]
    x, learnt, start = _window_curves(layer, initial, 0)
    assert np.isclose(learnt.max(), (70 - 50) / 80, atol=0.02) and np.isclose(start.max(), (300 - 50) / 80, atol=0.1)
    assert learnt_intensity_figure([run], tmp_path / "figure.png") == tmp_path / "figure.png"
    assert learnt_intensity_figure([tmp_path / "no-run"], tmp_path / "none.png") is None


def test_preprocessing_experiment_refuses_a_folder_made_with_other_options(tiny_cohort: Manifest,
                                                                           tmp_path: Path) -> None:
    import json

    import pytest

    from sarcomakit.core.errors import UserInputError
    from sarcomakit.experiments.preprocessing_comparison import _refuse_other_options

    (tmp_path / "experiment.json").write_text(json.dumps({"options_sha256": "abc"}))
    _refuse_other_options(tmp_path, "abc")
    with pytest.raises(UserInputError, match="other training options"):
        _refuse_other_options(tmp_path, "def")
