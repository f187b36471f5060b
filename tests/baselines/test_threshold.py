"""The thresholding baseline: works on an easy image, fails clearly on the synthetic sarcoma cohort."""

from __future__ import annotations

import numpy as np
import pytest

from sarcomakit.baselines import threshold_baseline
from sarcomakit.data.synthetic import Tissue, make_synthetic_case
from sarcomakit.errors import UserInputError


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def _easy_case(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A cylinder of 'muscle' in air with one bright sphere and a smaller bright blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(32), np.arange(64), np.arange(64), indexing="ij")
    body = (y - 32) ** 2 + (x - 32) ** 2 < 28**2
    tumour = (z - 16) ** 2 + (y - 30) ** 2 + (x - 38) ** 2 < 9**2
    blob = (z - 10) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 < 3**2
    t2 = np.where(body, 1.0, 0.0) + 2.0 * tumour + 2.0 * blob + 0.05 * rng.normal(size=body.shape)
    t1 = np.where(body, 1.0, 0.0) + 0.05 * rng.normal(size=body.shape)
    return {"T1": t1.astype(np.float32), "T2FS": t2.astype(np.float32)}, tumour


@pytest.mark.parametrize("method", ["otsu", "percentile"])
def test_recovers_an_isolated_bright_tumour(method):
    images, tumour = _easy_case()
    mask = threshold_baseline(images, method=method, percentile=90.0)
    assert mask.dtype == np.uint8 and mask.shape == tumour.shape
    assert _dice(mask, tumour) > 0.9  # the smaller blob is dropped as a second component


def test_clearly_below_the_target_on_the_synthetic_cohort():
    """On synthetic sarcoma cases the tumour is plainly visible, yet thresholding stays far below Dice 0.80.

    The gap is what the learned model must close: oedema, fluid, vessels, failed fat suppression and
    bias are as bright as tumour on T2FS. First 12 cases of seed 0: mean Dice 0.52 when written.
    """
    scores, contrasts = [], []
    for index in range(12):
        case = make_synthetic_case(index, seed=0, channels=("T1", "T2FS"))
        t2 = case.images["T2FS"]
        tumour = case.label > 0
        contrasts.append(t2[tumour].mean() / t2[case.tissue == Tissue.MUSCLE].mean())
        scores.append(_dice(threshold_baseline(case.images), tumour))
    assert min(contrasts) > 1.8  # tumour is well visible: mean T2FS at least 1.8x muscle in every case
    assert np.mean(scores) <= 0.65
    assert max(scores) > 0.8  # the baseline is not broken: on easy cases it does find the tumour


def test_missing_channel_or_mismatched_shapes_are_user_errors():
    images, _ = _easy_case()
    with pytest.raises(UserInputError, match="T2FS"):
        threshold_baseline({"T1": images["T1"]})
    with pytest.raises(UserInputError, match="shape"):
        threshold_baseline({"T1": images["T1"][:-1], "T2FS": images["T2FS"]})
    with pytest.raises(UserInputError, match="method"):
        threshold_baseline(images, method="triangle")  # type: ignore[arg-type]


def test_empty_body_gives_an_empty_mask():
    images = {"T2FS": np.zeros((8, 16, 16), np.float32)}
    images["T2FS"][0, 0, 0] = 1.0
    assert threshold_baseline(images, skin_voxels=1).sum() == 0
