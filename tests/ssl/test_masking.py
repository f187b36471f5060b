"""Masking geometry of the pretraining tasks: ratio, block size and shape, one modality per cross-modal sample."""

from __future__ import annotations

import numpy as np
import pytest

from sarcomakit.tasks.pretraining.masking import block_mask, default_block_size, modality_mask
from sarcomakit.tasks.pretraining.reconstruction import CrossModalMaskedAutoencoderTask, MaskedAutoencoderTask


def _block_grid(mask: np.ndarray, block: tuple[int, ...]) -> np.ndarray:
    """The mask's state per block, after checking that every block is uniformly masked or visible."""
    z, y, x = (s // b for s, b in zip(mask.shape, block, strict=True))
    blocks = mask[: z * block[0], : y * block[1], : x * block[2]].reshape(z, block[0], y, block[1], x, block[2])
    first = blocks[:, :1, :, :1, :, :1]
    assert np.array_equal(np.broadcast_to(first, blocks.shape), blocks), "a block is partly masked"
    return first[:, 0, :, 0, :, 0]


def test_default_blocks_are_a_tenth_of_the_patch_like_nnssl() -> None:
    assert default_block_size((160, 160, 160)) == (16, 16, 16)
    assert default_block_size((32, 128, 128)) == (3, 13, 13)
    assert default_block_size((4, 8, 8)) == (1, 1, 1)


@pytest.mark.parametrize(("patch", "block", "ratio"), [((20, 40, 40), (2, 4, 4), 0.75), ((16, 32, 32), (4, 8, 8), 0.5),
                                                       ((160, 160, 160), (16, 16, 16), 0.75)])
def test_block_mask_masks_the_exact_fraction_of_whole_blocks(patch, block, ratio) -> None:  # noqa: ANN001
    mask = block_mask(patch, block, ratio, np.random.default_rng(1))
    assert mask.shape == patch and mask.dtype == bool
    grid = _block_grid(mask, block)
    assert grid.shape == tuple(p // b for p, b in zip(patch, block, strict=True))
    assert grid.sum() == round(ratio * grid.size)
    assert mask.mean() == pytest.approx(ratio)


def test_block_mask_cuts_edge_blocks_and_differs_between_draws() -> None:
    patch, block = (10, 10, 10), (4, 4, 4)  # a 3x3x3 grid whose last blocks are cut to 2 voxels
    first = block_mask(patch, block, 0.5, np.random.default_rng(0))
    assert first.shape == patch
    assert not np.array_equal(first, block_mask(patch, block, 0.5, np.random.default_rng(1)))
    assert np.array_equal(first, block_mask(patch, block, 0.5, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="ratio"):
        block_mask(patch, block, 1.5, np.random.default_rng(0))


def test_mae_masks_the_same_blocks_in_every_channel() -> None:
    task = MaskedAutoencoderTask(mask_ratio=0.75)
    mask, target = task.draw_mask(3, (20, 40, 40), np.random.default_rng(0))
    assert mask.shape == (3, 20, 40, 40) and target == -1
    assert np.array_equal(mask[0], mask[1]) and np.array_equal(mask[0], mask[2])
    assert _block_grid(mask[0], (2, 4, 4)).mean() == pytest.approx(0.75)


def test_crmae_masks_exactly_one_modality_per_sample() -> None:
    targets = []
    for seed in range(40):
        mask, target = modality_mask(4, (8, 16, 16), (2, 4, 4), np.random.default_rng(seed), density=0.5)
        masked_channels = np.flatnonzero(mask.reshape(4, -1).any(axis=1))
        assert masked_channels.tolist() == [target]
        assert mask[target].mean() == pytest.approx(0.5)
        targets.append(target)
    assert set(targets) == {0, 1, 2, 3}  # every modality gets its turn


def test_crmae_whole_modality_and_spatial_masking_of_the_others() -> None:
    whole, target = modality_mask(3, (8, 16, 16), (2, 4, 4), np.random.default_rng(3), density=1.0)
    assert whole[target].all() and not np.delete(whole, target, axis=0).any()
    mixed, target = modality_mask(3, (8, 16, 16), (2, 4, 4), np.random.default_rng(3), density=1.0, other_ratio=0.25)
    others = np.delete(mixed, target, axis=0)
    assert mixed[target].all() and others.mean() == pytest.approx(0.25)
    assert np.array_equal(others[0], others[1])
    task = CrossModalMaskedAutoencoderTask(density=0.5)
    mask, target = task.draw_mask(2, (10, 20, 20), np.random.default_rng(0))
    assert np.flatnonzero(mask.reshape(2, -1).any(axis=1)).tolist() == [target]
    with pytest.raises(ValueError, match="two channels"):
        modality_mask(1, (8, 8, 8), (2, 2, 2), np.random.default_rng(0))
