"""Training from scribbles alone: the scribbles, the partial loss, the pseudo-labels and a short run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sarcomakit.evaluation.metrics import dice
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.planning.preprocess import preprocess_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import build_task
from sarcomakit.tasks.scribbles import (
    BACKGROUND,
    TUMOUR,
    UNLABELLED,
    PartialCrossEntropy,
    case_scribbles,
    random_walker_pseudo_label,
    scribble_label_map,
)
from sarcomakit.training.api import load_preprocessed, train

SHAPE = (20, 40, 40)


def ball(centre=(10, 20, 20), radii=(6, 11, 9)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(s) for s in SHAPE], indexing="ij")
    distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip((z, y, x), centre, radii, strict=True))
    return distance <= 1


def test_scribbles_label_few_voxels_each_on_its_side_and_depend_only_on_the_case() -> None:
    tumour = ball()
    labels = scribble_label_map(case_scribbles(tumour, "STS_001", n_slices=3), SHAPE)
    assert set(np.unique(labels)) == {UNLABELLED, BACKGROUND, TUMOUR}
    assert tumour[labels == TUMOUR].all() and not tumour[labels == BACKGROUND].any()
    assert 0 < np.mean(labels != UNLABELLED) < 0.05  # cheap labels
    again = scribble_label_map(case_scribbles(tumour, "STS_001", n_slices=3), SHAPE)
    other = scribble_label_map(case_scribbles(tumour, "STS_002", n_slices=3), SHAPE)
    assert np.array_equal(labels, again) and not np.array_equal(labels, other)
    more = scribble_label_map(case_scribbles(tumour, "STS_001", n_slices=6), SHAPE)
    assert np.sum(more != UNLABELLED) > np.sum(labels != UNLABELLED)


def test_partial_cross_entropy_counts_only_scribbled_voxels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 5, 6)
    labels = torch.zeros(2, 1, 4, 5, 6, dtype=torch.long)
    labels[0, 0, 1, 2, :3] = TUMOUR
    labels[1, 0, 3, :, 0] = BACKGROUND
    model = nn.Identity()
    loss = PartialCrossEntropy()(model, {"image": logits, "label": labels}, torch.device("cpu")).total
    scribbled = labels[:, 0] != UNLABELLED
    expected = F.cross_entropy(logits.permute(0, 2, 3, 4, 1)[scribbled], labels[:, 0][scribbled] - 1)
    torch.testing.assert_close(loss, expected)
    changed = logits.clone()
    changed[:, :, 0] += 5.0 * torch.randn_like(changed[:, :, 0])  # unlabelled slice z=0 moves; the loss does not
    same = PartialCrossEntropy()(model, {"image": changed, "label": labels}, torch.device("cpu")).total
    torch.testing.assert_close(same, loss)
    smooth = PartialCrossEntropy(tv_weight=1.0)(model, {"image": changed, "label": labels}, torch.device("cpu"))
    assert smooth.total > same and smooth.parts["tv"] > 0


def test_random_walker_grows_scribbles_into_the_tumour() -> None:
    tumour = ball()
    rng = np.random.default_rng(0)
    image = (tumour * 2.0 + rng.normal(scale=0.3, size=SHAPE)).astype(np.float32)[None]
    prompts = case_scribbles(tumour, "STS_001", n_slices=2)
    pseudo = random_walker_pseudo_label(image, prompts, spacing=(2.0, 1.0, 1.0))
    scribbled = scribble_label_map(prompts, SHAPE) == TUMOUR
    assert dice(pseudo > 0, tumour) > 0.85 > dice(scribbled, tumour)


@pytest.mark.slow
def test_a_short_run_from_scribbles_learns_the_tumour_and_records_its_supervision(tiny_cohort, tmp_path: Path) -> None:
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json")
    config = TrainConfig(task="scribble_segmentation", epochs=8, iterations_per_epoch=6, patch_size=[16, 32, 32],
                         batch_size=2, optimizer="adamw", learning_rate=3e-3, augmentation="none", num_workers=0,
                         n_folds=3, checkpoint_selection="last", device="cpu", foreground_fraction=0.5,
                         network_options={"channels": [8, 16, 32], "num_res_units": 1},
                         task_options={"scribble_slices": 3})
    task = build_task(config)
    preprocess_cohort(tiny_cohort, plan, tmp_path / "pre")
    cases = load_preprocessed(tmp_path / "pre", tiny_cohort.case_ids[:2])
    sample = task.training_data(cases, plan, config, 4)[0]
    assert set(torch.unique(sample["label"]).tolist()) <= {UNLABELLED, BACKGROUND, TUMOUR}

    result = train(tiny_cohort, plan, tmp_path / "run", folds=(0,), config=config).folds[0]
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.7, losses
    # scored on the full masks of the validation cases, which it never trained on
    assert result.history[-1]["val_dice"] > max(0.25, result.history[0]["val_dice"] + 0.1)
    state = json.loads((tmp_path / "run" / "fold_0" / "task_state.json").read_text(encoding="utf-8"))
    assert state["mode"] == "partial" and 0 < state["labelled_voxel_fraction"] < 0.1
