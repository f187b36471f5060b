"""Multi-task network and task: heads, partial labels, modality dropout, out-of-fold outputs, prediction CSV."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.evaluation.oof import OOF_COLUMNS
from sarcomakit.inference.case_level import tumour_centred_patch
from sarcomakit.inference.predictor import predict
from sarcomakit.models.multitask import build_multitask_network, find_bottleneck
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.multitask import ClinicalTargets, MultiTaskTask
from sarcomakit.training.api import train

SMALL = {"channels": [8, 16, 32], "num_res_units": 1}


@pytest.mark.parametrize("backbone", ["resunet", "dynunet"])
@pytest.mark.parametrize("ordinal", [False, True])
def test_heads_shapes_and_gradients(backbone: str, ordinal: bool) -> None:
    options = SMALL if backbone == "resunet" else {"filters": [8, 16, 32]}
    net = build_multitask_network(backbone, in_channels=3, out_channels=2, patch_size=(16, 32, 32), ordinal=ordinal,
                                  **options)
    out = net(torch.randn(2, 3, 16, 32, 32), torch.tensor([[1.0, 1, 0], [1, 1, 1]]))
    assert out["segmentation"].shape == (2, 2, 16, 32, 32)
    assert out["grade"].shape == (2, 2 if ordinal else 3) and out["log_risk"].shape == (2,)
    (out["grade"].sum() + out["log_risk"].sum()).backward()
    bottleneck = find_bottleneck(net.backbone)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bottleneck.parameters())


def test_availability_flags_change_the_heads_input() -> None:
    torch.manual_seed(0)
    net = build_multitask_network("resunet", in_channels=2, out_channels=2, patch_size=(16, 32, 32), **SMALL).eval()
    x = torch.randn(1, 2, 16, 32, 32)
    a = net(x, torch.tensor([[1.0, 1.0]]))["log_risk"]
    b = net(x, torch.tensor([[1.0, 0.0]]))["log_risk"]
    assert not torch.allclose(a, b)


def test_clinical_targets_mark_missing_labels() -> None:
    manifest = Manifest(["CT"], [Case("a", {}, grade="high", survival_time=10.0, event=1), Case("b", {})])
    targets = ClinicalTargets(manifest)
    assert targets.grade("a") == 2 and targets.grade("b") == -1
    assert targets.survival("a") == (10.0, 1.0)
    assert all(np.isnan(targets.survival("b")))


def coordinate_volume(shape: tuple[int, int, int]) -> torch.Tensor:
    """Two channels whose voxel values encode their own (z, y, x): zero only where a crop pads."""
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    code = torch.from_numpy((10000 * z + 100 * y + x + 1).astype(np.float32))
    return torch.stack([code, -code])


def voxel_of(value: torch.Tensor) -> tuple[int, int, int]:
    code = int(value) - 1
    return code // 10000, code // 100 % 100, code % 100


def test_tumour_centred_patch_is_centred_on_the_tumour_centre_of_mass() -> None:
    volume = coordinate_volume((20, 30, 30))
    tumour = np.zeros((20, 30, 30), bool)
    tumour[9:12, 14:17, 10:13] = True  # centre of mass (10, 15, 11)
    patch = tumour_centred_patch(volume, tumour, (8, 10, 12))
    assert patch.shape == (2, 8, 10, 12)
    assert voxel_of(patch[0, 4, 5, 6]) == (10, 15, 11)  # the patch centre (size // 2) is the tumour centre
    torch.testing.assert_close(patch[1], -patch[0])  # every channel cropped alike
    assert bool((patch[0] > 0).all())  # inside the volume: nothing padded
    nothing = tumour_centred_patch(volume, np.zeros_like(tumour), (8, 10, 12))
    assert voxel_of(nothing[0, 4, 5, 6]) == (10, 15, 15)  # no tumour: the volume centre


def test_tumour_near_a_border_is_kept_in_a_patch_shifted_inside_the_volume() -> None:
    # As the training patches (training/patches.py): where the volume is large enough, the crop is moved
    # inside it rather than padded, so the heads never see padding the training never showed them.
    volume = coordinate_volume((10, 20, 20))
    tumour = np.zeros((10, 20, 20), bool)
    tumour[5, 1, 18] = True  # one voxel from the top (y) and from the right (x) border
    patch = tumour_centred_patch(volume, tumour, (8, 8, 8))
    # z centred (5 - 4 = 1); y starts at 0 instead of -3; x ends at the border (12..19) instead of 14..21
    torch.testing.assert_close(patch, volume[:, 1:9, 0:8, 12:20])
    assert voxel_of(patch[0, 4, 1, 6]) == (5, 1, 18)


def test_axes_shorter_than_the_patch_are_zero_padded_around_the_centred_tumour() -> None:
    volume = coordinate_volume((4, 20, 20))  # 4 slices for a patch of 8
    tumour = np.zeros((4, 20, 20), bool)
    tumour[1, 10, 3] = True
    patch = tumour_centred_patch(volume, tumour, (8, 8, 8))
    assert patch.shape == (2, 8, 8, 8)
    # z: slice 1 at the patch centre 4, so the 4 slices fill patch slices 3..6 and the rest is zeros
    assert bool((patch[:, :3] == 0).all()) and bool((patch[:, 7] == 0).all())
    torch.testing.assert_close(patch[:, 3:7], volume[:, :, 6:14, 0:8])  # y centred, x shifted inside
    assert voxel_of(patch[0, 4, 4, 3]) == (1, 10, 3)


def test_unknown_task_name_is_a_user_error() -> None:
    from sarcomakit.core.errors import UserInputError

    with pytest.raises(UserInputError, match="unknown task"):
        MultiTaskTask(tasks=("segmentation", "stage"))


@pytest.mark.slow
def test_multitask_run_writes_out_of_fold_and_clinical_predictions(tiny_cohort, tmp_path: Path) -> None:
    # one case lacks every clinical label: it must still train segmentation without NaN
    tiny_cohort.cases[1].grade = None
    tiny_cohort.cases[1].survival_time = None
    tiny_cohort.cases[1].event = None
    del tiny_cohort.cases[2].images["T2"]  # a missing modality is zero-filled and flagged
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json")
    cache = tmp_path / "run" / "preprocessed"
    config = TrainConfig(task="multitask", task_options={"weighting": "uncertainty", "modality_dropout": 0.5},
                         epochs=3, iterations_per_epoch=4, patch_size=[16, 32, 32], batch_size=2,
                         optimizer="adamw", learning_rate=3e-3, augmentation="light", num_workers=0, n_folds=3,
                         network_options=SMALL, device="cpu", checkpoint_selection="last")
    results = train(tiny_cohort, plan, tmp_path / "run", folds=(0, 1), config=config)
    missing = PreprocessedCase.load(cache, tiny_cohort.cases[2].case_id)
    assert missing.properties["missing_channels"] == ["T2"] and np.all(missing.data[1] == 0)
    for result in results.folds.values():
        losses = [h["train_loss"] for h in result.history]
        assert all(np.isfinite(losses))
        assert {"loss_segmentation", "val_dice", "val_score"} <= set(result.history[-1])
        assert result.best_epoch == config.epochs - 1  # checkpoint_selection="last"
    with open(tmp_path / "run" / "oof_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == OOF_COLUMNS
    assert len(rows) == sum(len(f["val"]) for f in __import__("json").loads(
        (tmp_path / "run" / "splits.json").read_text(encoding="utf-8"))[:2])
    assert all(r["risk_group"] in ("low", "high") for r in rows)
    assert all(abs(float(r["p_low"]) + float(r["p_intermediate"]) + float(r["p_high"]) - 1) < 1e-5 for r in rows)

    out = tmp_path / "pred"
    tiny_cohort.save(tmp_path / "cohort_missing_t2.csv")
    outcome = predict(tmp_path / "run", tmp_path / "cohort_missing_t2.csv", out)
    assert not outcome.failures
    with open(out / "clinical_predictions.csv") as handle:
        clinical = list(csv.DictReader(handle))
    assert sorted(r["case_id"] for r in clinical) == sorted(tiny_cohort.case_ids)
    assert all(r["grade_pred"] in ("low", "intermediate", "high") and r["risk_group"] in ("low", "high")
               for r in clinical)
