"""The thresholding baseline: exact on separable images, and the failure modes its docstring names."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sarcomakit.baselines import threshold_baseline
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.synthetic import Tissue, make_synthetic_case


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


GRID = np.meshgrid(np.arange(32), np.arange(64), np.arange(64), indexing="ij")


def _ball(centre: tuple[int, int, int], radius: float) -> np.ndarray:
    z, y, x = GRID
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius**2


def _images(bright: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """A cylinder of 'muscle' (1.0) in air; ``bright`` voxels 2.0 higher on T2FS; noise sd 0.05 (40x below the gap)."""
    rng = np.random.default_rng(seed)
    _, y, x = GRID
    body = (y - 32) ** 2 + (x - 32) ** 2 < 28**2
    t2 = np.where(body, 1.0, 0.0) + 2.0 * bright + 0.05 * rng.normal(size=body.shape)
    t1 = np.where(body, 1.0, 0.0) + 0.05 * rng.normal(size=body.shape)
    return {"T1": t1.astype(np.float32), "T2FS": t2.astype(np.float32)}


TUMOUR = _ball((16, 30, 38), 9)
BLOB = _ball((10, 20, 20), 3)  # a second, smaller bright component


def test_otsu_recovers_an_isolated_bright_tumour_exactly():
    # Tumour and muscle are 40 noise sd apart: any cut between the classes keeps exactly the tumour's voxels,
    # and the smaller blob is dropped as a second component.
    mask = threshold_baseline(_images(TUMOUR | BLOB), method="otsu")
    assert mask.dtype == np.uint8 and mask.shape == TUMOUR.shape
    np.testing.assert_array_equal(mask.astype(bool), TUMOUR)


def test_percentile_cut_keeps_the_tumour_and_only_noise_voxels_touching_it():
    # The 90th body percentile lets at most 10% of muscle voxels through. All tumour voxels are kept; the
    # only extra voxels are those above the cut and connected to the tumour: about 10% of its outer shell,
    # doubled for the small clusters they start (noise above the cut is far below the percolation threshold).
    mask = threshold_baseline(_images(TUMOUR | BLOB), method="percentile", percentile=90.0).astype(bool)
    shell = ndimage.binary_dilation(TUMOUR) & ~TUMOUR
    assert mask[TUMOUR].all()
    assert not mask[BLOB].any()
    assert (mask & ~TUMOUR).sum() <= 2 * 0.10 * shell.sum()
    assert _dice(mask, TUMOUR) >= 2 * TUMOUR.sum() / (2 * TUMOUR.sum() + 2 * 0.10 * shell.sum())


def test_an_equally_bright_rim_is_merged_with_the_tumour():
    # Oedema as bright as tumour and touching it: one component, so Dice = 2|T| / (2|T| + |rim|).
    rim = _ball((16, 30, 38), 13) & ~TUMOUR
    mask = threshold_baseline(_images(TUMOUR | rim)).astype(bool)
    np.testing.assert_array_equal(mask, TUMOUR | rim)
    assert _dice(mask, TUMOUR) == pytest.approx(2 * TUMOUR.sum() / (2 * TUMOUR.sum() + rim.sum()))


def test_a_larger_bright_region_elsewhere_is_chosen_instead_of_the_tumour():
    fluid = _ball((16, 30, 17), 10)  # apart from the tumour, and larger
    assert not (ndimage.binary_dilation(fluid, iterations=2) & TUMOUR).any() and fluid.sum() > TUMOUR.sum()
    mask = threshold_baseline(_images(TUMOUR | fluid)).astype(bool)
    np.testing.assert_array_equal(mask, fluid)
    assert _dice(mask, TUMOUR) == 0.0


BRIGHT_ON_T2FS = [Tissue.ARTERY, Tissue.VEIN, Tissue.FLUID, Tissue.NODE, Tissue.FAT]  # fat: failed suppression


def test_below_the_target_on_the_synthetic_cohort_because_of_bright_confounders():
    """On synthetic sarcoma cases the tumour is plainly visible, yet thresholding stays below Dice 0.80.

    0.80 is the Dice a learned model must reach on this cohort. The gap comes from tissue as bright as
    tumour on T2FS: vessels, fluid, nodes and fat where suppression fails; most voxels the baseline
    wrongly includes are of those tissues (read from the generator's tissue map).
    """
    scores, contrasts = [], []
    false_positive_tissue = np.zeros(len(Tissue), np.int64)
    for index in range(12):
        case = make_synthetic_case(index, seed=0, channels=("T1", "T2FS"))
        t2 = case.images["T2FS"]
        tumour = case.label > 0
        contrasts.append(t2[tumour].mean() / t2[case.tissue == Tissue.MUSCLE].mean())
        mask = threshold_baseline(case.images).astype(bool)
        scores.append(_dice(mask, tumour))
        false_positive_tissue += np.bincount(case.tissue[mask & ~tumour], minlength=len(Tissue))
    assert min(contrasts) > 1.8  # tumour is well visible: mean T2FS at least 1.8x muscle in every case
    assert np.mean(scores) < 0.80
    assert false_positive_tissue[BRIGHT_ON_T2FS].sum() >= 0.8 * false_positive_tissue.sum() > 0


def test_missing_channel_or_mismatched_shapes_are_user_errors():
    images = _images(TUMOUR)
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
