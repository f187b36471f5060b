"""Macenko normalisation and stain augmentation against images made from known stain vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.wsi.stain import (
    HED_STAIN_MATRIX,
    MacenkoNormalizer,
    StainAugment,
    macenko_stain_matrix,
    od_to_rgb,
)

TRUE_STAINS = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11]])
TRUE_STAINS = TRUE_STAINS / np.linalg.norm(TRUE_STAINS, axis=1, keepdims=True)


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _he_image(stains: np.ndarray, *, seed: int = 0, h_scale: float = 1.0, e_scale: float = 1.0) -> np.ndarray:
    """128x128 H&E-like image from known concentrations: nuclei, eosin stroma, a strip of glass."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:128]
    haem = np.full((128, 128), 0.25)  # haematoxylin counterstain everywhere, as in real H&E
    for _ in range(40):
        cy, cx, radius = rng.uniform(0, 128), rng.uniform(0, 128), rng.uniform(3, 7)
        haem = np.maximum(haem, np.where((yy - cy) ** 2 + (xx - cx) ** 2 < radius**2, rng.uniform(0.8, 1.5), 0))
    eosin = 0.4 + 0.5 * rng.random((128, 128))
    haem[:, :16] = 0.0
    eosin[:, :16] = 0.0  # glass
    concentrations = np.stack([haem.ravel() * h_scale, eosin.ravel() * e_scale], axis=1)
    return od_to_rgb(concentrations @ stains).reshape(128, 128, 3)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(_unit(a) * _unit(b), axis=1)


def test_estimates_the_true_stain_vectors() -> None:
    estimated = macenko_stain_matrix(_he_image(TRUE_STAINS))
    # Every pixel mixes both stains, so the extreme angles sit slightly inside the true vectors.
    assert np.all(_cosines(estimated, TRUE_STAINS) > 0.98)


def test_normalising_to_own_stains_is_identity() -> None:
    image = _he_image(TRUE_STAINS)
    normalised = MacenkoNormalizer().fit(image).transform(image)
    assert normalised.shape == image.shape and normalised.dtype == np.uint8
    difference = np.abs(normalised.astype(int) - image.astype(int))
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 6


def test_normalising_a_restained_image_recovers_the_reference_stains() -> None:
    reference = _he_image(TRUE_STAINS, seed=0)
    other_stains = _unit(TRUE_STAINS + np.array([[0.15, -0.2, 0.25], [0.2, -0.1, 0.3]]))
    restained = _he_image(other_stains, seed=0, h_scale=1.4, e_scale=0.7)
    assert np.min(_cosines(macenko_stain_matrix(restained), TRUE_STAINS)) < 0.97  # clearly different
    normaliser = MacenkoNormalizer().fit(reference)
    normalised = normaliser.transform(restained)
    assert np.all(_cosines(macenko_stain_matrix(normalised), normaliser.stain_matrix_) > 0.99)
    before = np.abs(restained.astype(int) - reference.astype(int)).mean()
    after = np.abs(normalised.astype(int) - reference.astype(int)).mean()
    assert after < 0.3 * before


def test_normalizer_on_tensors() -> None:
    reference = _he_image(TRUE_STAINS, seed=0)
    restained = _he_image(_unit(TRUE_STAINS + 0.1), seed=1, h_scale=1.3)
    normaliser = MacenkoNormalizer().fit(reference)
    tensor = torch.from_numpy(restained).permute(2, 0, 1).float() / 255
    out = normaliser(tensor)
    assert out.shape == tensor.shape and out.dtype == torch.float32
    expected = normaliser.transform(restained)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy() * 255, expected, atol=1e-3)
    np.testing.assert_array_equal(normaliser(restained), expected)


def test_standard_reference_and_errors() -> None:
    image = _he_image(TRUE_STAINS)
    normalised = MacenkoNormalizer.standard().transform(image)
    assert np.all(_cosines(macenko_stain_matrix(normalised), MacenkoNormalizer.standard().stain_matrix_) > 0.99)
    glass = np.full((64, 64, 3), 245, np.uint8)
    with pytest.raises(UserInputError, match="stained tissue"):
        MacenkoNormalizer().fit(glass)
    np.testing.assert_array_equal(MacenkoNormalizer().fit(image).transform(glass), glass)
    with pytest.raises(RuntimeError, match="not fitted"):
        MacenkoNormalizer().transform(image)


@pytest.mark.parametrize("method", ["hed", "macenko"])
def test_augment_without_jitter_is_identity(method: str) -> None:
    image = _he_image(TRUE_STAINS)
    same = StainAugment(0.0, 0.0, method=method, seed=0)(image)
    assert np.abs(same.astype(int) - image.astype(int)).max() <= 1


def test_augment_is_seeded_and_changes_stain_amounts() -> None:
    image = _he_image(TRUE_STAINS)
    first = StainAugment(0.3, 0.05, seed=1)(image)
    again = StainAugment(0.3, 0.05, seed=1)(image)
    other = StainAugment(0.3, 0.05, seed=2)(image)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 2
    assert np.abs(first.astype(int) - image.astype(int)).mean() > 2
    # The glass stays (almost) glass: jitter acts on stain amounts, not on a global colour shift.
    assert np.abs(first[:, :16].astype(int) - image[:, :16].astype(int)).mean() < 0.2 * 255


def test_augment_tensors() -> None:
    image = _he_image(TRUE_STAINS)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    augment = StainAugment(0.2, 0.05, seed=0)
    single = augment(tensor)
    assert single.shape == tensor.shape and single.dtype == torch.float32
    assert 0.0 <= float(single.min()) <= float(single.max()) <= 1.0
    batch = augment(torch.stack([tensor, tensor]))
    assert batch.shape == (2, 3, 128, 128)
    assert not torch.equal(batch[0], batch[1])  # one draw per image
    as_uint8 = augment(torch.from_numpy(image).permute(2, 0, 1).contiguous())
    assert as_uint8.dtype == torch.uint8
    assert HED_STAIN_MATRIX.shape == (3, 3)


class _Same(Dataset):
    def __init__(self, image: np.ndarray, augment: StainAugment) -> None:
        self.tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        self.augment = augment

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.augment(self.tensor)


def test_workers_draw_different_jitters() -> None:
    dataset = _Same(_he_image(TRUE_STAINS), StainAugment(0.3, 0.05, seed=3))
    batches = list(DataLoader(dataset, batch_size=1, num_workers=2))
    # Worker 0 serves items 0 and 2, worker 1 items 1 and 3: their first draws must differ.
    assert not torch.equal(batches[0], batches[1])
