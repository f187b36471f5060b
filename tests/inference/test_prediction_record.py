"""A prediction folder's rerun skips only masks this model made from the same input, and refuses others'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import read_image, write_image
from sarcomakit.core.step_record import StepRecord
from sarcomakit.data.manifest import Manifest
from sarcomakit.inference.predictor import predict
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.api import train

TINY = TrainConfig(epochs=1, iterations_per_epoch=1, patch_size=[16, 32, 32], batch_size=1, optimizer="adamw",
                   augmentation="none", num_workers=0, n_folds=2, validate_every=1, device="cpu",
                   network_options={"channels": [4, 8], "num_res_units": 1})


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("*.nii.gz"))}


@pytest.mark.slow
def test_reruns_skip_only_their_own_masks_from_unchanged_inputs(tiny_cohort: Manifest, tmp_path: Path) -> None:
    cohort = tiny_cohort
    plan = plan_cohort(cohort, tmp_path / "plan.json")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    train(cohort, plan, run_a, folds=(0,), config=TINY)
    train(cohort, plan, run_b, folds=(0,), config=TINY.updated(seed=7))
    out = tmp_path / "pred"

    first = predict(run_a, cohort.source, out, device="cpu")
    assert sorted(first.results) == cohort.case_ids
    records = StepRecord(out, "predictions").folder
    assert sorted(p.stem for p in records.glob("*.json")) == cohort.case_ids
    again = predict(run_a, cohort.source, out, device="cpu")
    assert sorted(again.skipped) == cohort.case_ids and not again.results

    # an input re-exported in place with new content: that case alone is predicted again
    changed = cohort.cases[1]
    image = read_image(changed.images["T1"])
    array = sitk.GetArrayFromImage(image)
    edited = sitk.GetImageFromArray(np.flip(array, axis=2).copy())
    edited.CopyInformation(image)
    write_image(edited, changed.images["T1"])
    redone = predict(run_a, cohort.source, out, device="cpu")
    assert list(redone.results) == [changed.case_id] and len(redone.skipped) == len(cohort) - 1

    # another model's masks are neither skipped nor overwritten without --overwrite
    before = _stamps(out)
    with pytest.raises(UserInputError, match="made by another model or with other options"):
        predict(run_b, cohort.source, out, device="cpu")
    assert _stamps(out) == before
    with pytest.raises(UserInputError, match="made by another model or with other options"):
        predict(run_a, cohort.source, out, device="cpu", largest_component=True)  # the same model, other masks
    replaced = predict(run_b, cohort.source, out, device="cpu", overwrite=True)
    assert sorted(replaced.results) == cohort.case_ids
    assert len({json.loads(p.read_text(encoding="utf-8"))["options"] for p in records.glob("*.json")}) == 1
    assert sorted(predict(run_b, cohort.source, out, device="cpu").skipped) == cohort.case_ids

    # masks nobody recorded (a hand-drawn one, say) are not taken for predictions
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    hand_drawn = foreign / f"{cohort.case_ids[0]}.nii.gz"
    hand_drawn.write_bytes((out / f"{cohort.case_ids[0]}.nii.gz").read_bytes())
    with pytest.raises(UserInputError, match="did not record writing"):
        predict(run_a, cohort.source, foreign, device="cpu")
    assert sorted(p.name for p in foreign.iterdir()) == [hand_drawn.name]
