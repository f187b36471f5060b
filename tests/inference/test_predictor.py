"""Predictor: a run whose task gives no class probabilities is refused with a user error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Case
from sarcomakit.inference.predictor import Predictor
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import CaseOutput, TaskRequirements


class _CaseLevelTask:
    """A task that answers per case only (no segmentation), as a classification task would."""

    name = "case-level"
    requirements = TaskRequirements()

    def infer(self, model, case, plan, config, device, *, overlap, mirror_axes=()):
        return CaseOutput(probabilities=None, values={"score": 0.5})

    def combine(self, outputs, fold_states):
        return CaseOutput(probabilities=None, values={"score": 0.5})


def test_a_task_without_probabilities_is_a_user_error(tmp_path: Path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(8, 12, 12)).astype(np.float32))
    path = tmp_path / "c1_MR.nii.gz"
    sitk.WriteImage(image, str(path))
    plan = Plan(channels=["MR"], labels={"background": 0, "tumour": 1}, target_spacing=[1.0, 1.0, 1.0],
                anisotropic=False, low_res_axis=None, crop_to_nonzero=False,
                normalization=[ChannelNormalization(channel="MR", scheme="zscore")], median_shape=[8, 12, 12],
                patch_size=[8, 12, 12], batch_size=1, memory_budget_mb=100.0)
    predictor = Predictor(plan, TrainConfig(), _CaseLevelTask(), [torch.nn.Identity()],
                          torch.device("cpu"))
    with pytest.raises(UserInputError, match="does not segment"):
        predictor.predict_case(Case(case_id="c1", images={"MR": path}))
