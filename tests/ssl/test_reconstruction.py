"""The masked-reconstruction loss counts masked voxels only, the network sees them as zeros, baselines are exact where
they should be, and the sampler is deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sarcomakit.tasks.pretraining.baselines import affine_from_modalities, interpolate_from_visible
from sarcomakit.tasks.pretraining.masking import block_mask
from sarcomakit.tasks.pretraining.reconstruction import MaskedReconstructionObjective, masked_mse
from sarcomakit.tasks.pretraining.sampling import MaskedPatchDataset, crop


def test_loss_ignores_the_output_at_visible_voxels() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(2, 3, 8, 8, 8, generator=generator)
    mask = torch.from_numpy(block_mask((8, 8, 8), (2, 2, 2), 0.5, np.random.default_rng(0))).expand(2, 3, 8, 8, 8)
    output = torch.randn(2, 3, 8, 8, 8, generator=generator)
    loss = masked_mse(output, target, mask)
    changed_visible = output.clone()
    changed_visible[~mask] += 100.0
    assert masked_mse(changed_visible, target, mask) == pytest.approx(float(loss))
    changed_masked = output.clone()
    changed_masked[mask] += 1.0
    assert float(masked_mse(changed_masked, target, mask)) > float(loss) + 0.5
    expected = ((output - target) ** 2)[mask].mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


class _Recorder(nn.Module):
    """Returns a fixed output and keeps what it was given."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output
        self.seen: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x.clone()
        return self.output


def test_objective_zeroes_masked_voxels_and_scores_only_them() -> None:
    image = torch.randn(1, 2, 8, 8, 8) + 5.0
    mask = torch.zeros(1, 2, 8, 8, 8, dtype=torch.bool)
    mask[:, 1, :4] = True
    perfect_at_masked = torch.where(mask, image, torch.zeros_like(image))  # wrong everywhere else
    model = _Recorder(perfect_at_masked)
    loss = MaskedReconstructionObjective()(model, {"image": image, "mask": mask}, torch.device("cpu"))
    assert float(loss.total) == 0.0
    assert model.seen is not None and torch.all(model.seen[mask] == 0)
    assert torch.equal(model.seen[~mask], image[~mask])


def test_interpolation_is_exact_on_linear_ramps_and_nan_without_visible_voxels() -> None:
    z, y, x = np.meshgrid(np.arange(8), np.arange(12), np.arange(12), indexing="ij")
    ramp = 0.5 * z - 0.25 * y + 2.0 * x + 3.0
    mask = np.zeros(ramp.shape, bool)
    mask[2:5, 3:8, 4:9] = True
    np.testing.assert_allclose(interpolate_from_visible(ramp, mask), ramp, atol=1e-9)
    edge = np.zeros(ramp.shape, bool)
    edge[:, :, :3] = True  # no axis brackets these voxels: the nearest visible voxel along x stands in
    estimate = interpolate_from_visible(ramp, edge)
    assert np.isfinite(estimate).all() and np.array_equal(estimate[~edge], ramp[~edge])
    assert np.isnan(interpolate_from_visible(ramp, np.ones(ramp.shape, bool))).all()


def test_affine_baseline_recovers_an_affine_relation_between_modalities() -> None:
    rng = np.random.default_rng(0)
    others = rng.normal(size=(2, 6, 6, 6))
    target = 1.5 - 2.0 * others[0] + 0.5 * others[1]
    mask = rng.random((6, 6, 6)) < 0.5
    fitted = affine_from_modalities(target + 0.0, others, mask)
    np.testing.assert_allclose(fitted[mask], target[mask], atol=1e-9)
    noisy = target + rng.normal(scale=0.3, size=target.shape)
    assert np.mean((affine_from_modalities(noisy, others, mask) - noisy)[mask] ** 2) < 0.3**2


def test_masked_patches_are_deterministic_padded_and_streamed_from_the_case_arrays() -> None:
    class Case:
        def __init__(self, data: np.ndarray) -> None:
            self.data = data

    data = np.arange(2 * 6 * 10 * 10, dtype=np.float32).reshape(2, 6, 10, 10)
    patch = crop(data, (-1, 2, 2), (8, 4, 4))
    assert patch.shape == (2, 8, 4, 4) and np.all(patch[:, 0] == 0) and np.all(patch[:, 7] == 0)
    np.testing.assert_array_equal(patch[:, 1:7], data[:, :, 2:6, 2:6])

    def mask_fn(channels, size, rng):  # noqa: ANN001, ANN202
        return np.broadcast_to(block_mask(size, (2, 2, 2), 0.5, rng), (channels, *size)).copy(), -1

    dataset = MaskedPatchDataset([Case(data)], (4, 8, 8), 5, mask_fn, seed=3)
    first, again = dataset[2], dataset[2]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["mask"], again["mask"])
    dataset.set_epoch(1)
    assert not torch.equal(first["mask"], dataset[2]["mask"])
    assert first["image"].shape == (2, 4, 8, 8) and first["mask"].dtype == torch.bool
