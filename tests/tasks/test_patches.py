"""Patch sampling: sizes, padding, foreground oversampling, determinism."""

from types import SimpleNamespace

import numpy as np
import torch

from sarcomakit.tasks.patches import CaseVolume, PatchDataset, crop_patch


def _volume(shape=(20, 40, 40), box=(slice(2, 5), slice(30, 36), slice(3, 8))) -> CaseVolume:
    data = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[box] = 1
    return CaseVolume(SimpleNamespace(case_id="x", data=data, label=label))


def test_forced_patches_contain_foreground_and_random_ones_usually_not() -> None:
    volume = _volume()
    rng = np.random.default_rng(0)
    forced = [crop_patch(volume, (8, 16, 16), rng, True)[1].any() for _ in range(50)]
    free = [crop_patch(volume, (8, 16, 16), rng, False)[1].any() for _ in range(50)]
    assert all(forced)
    assert np.mean(free) < 0.5


def test_patch_larger_than_volume_is_zero_padded_and_keeps_the_volume_whole() -> None:
    volume = _volume(shape=(4, 10, 10), box=(slice(0, 4), slice(0, 10), slice(0, 10)))
    image, label = crop_patch(volume, (8, 16, 16), np.random.default_rng(1), False)
    assert image.shape == (2, 8, 16, 16) and label.shape == (1, 8, 16, 16)
    assert label.sum() == 4 * 10 * 10  # every voxel of the volume is inside the patch
    np.testing.assert_array_equal(image[:, label[0] == 0], 0)


def test_dataset_is_deterministic_per_epoch_and_index() -> None:
    dataset = PatchDataset([_volume()], (8, 16, 16), length=4, augmentation="default", seed=7)
    first = dataset[2]
    again = dataset[2]
    assert first["image"].shape == (2, 8, 16, 16) and first["label"].dtype == torch.long
    torch.testing.assert_close(first["image"], again["image"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["image"], first["image"])
    assert set(torch.unique(first["label"]).tolist()) <= {0, 1}
