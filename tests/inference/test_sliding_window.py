"""Sliding-window prediction: one window returns the model's softmax; mirroring averages the flipped predictions."""

from __future__ import annotations

import itertools

import pytest
import torch

from sarcomakit.inference.sliding_window import mirror_combinations, predict_volume


def conv_model(kernel: torch.Tensor) -> torch.nn.Conv3d:
    """A 2-class model: class 1 logit = the input filtered by ``kernel`` (3x3x3), class 0 logit = 0."""
    conv = torch.nn.Conv3d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[1, 0] = kernel
    return conv.eval()


def shift_model() -> torch.nn.Conv3d:
    """Not mirror-equivariant: every logit reads the neighbouring voxel at +1 along each axis."""
    kernel = torch.zeros(3, 3, 3)
    kernel[2, 2, 2] = 3.0
    kernel[1, 1, 1] = 1.0
    return conv_model(kernel)


def symmetric_model() -> torch.nn.Conv3d:
    """Mirror-equivariant: a kernel symmetric under every flip, zero padding at the borders."""
    z, y, x = torch.meshgrid(*(torch.tensor([-1.0, 0.0, 1.0]),) * 3, indexing="ij")
    return conv_model(torch.exp(-(z**2 + y**2 + x**2)))


def softmax_of(model: torch.nn.Module, volume: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(volume[None]), dim=1)[0]


def volume(shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed))


def test_mirror_combinations_are_every_subset_identity_first() -> None:
    assert mirror_combinations((0, 1, 2)) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert mirror_combinations(()) == [()]


def test_one_window_without_mirroring_is_the_model_softmax() -> None:
    model, x = shift_model(), volume((8, 8, 8))
    torch.testing.assert_close(predict_volume(model, x, (8, 8, 8)), softmax_of(model, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("axes", [(2,), (0, 1, 2)])
def test_mirroring_averages_the_flipped_back_predictions_of_flipped_inputs(axes: tuple[int, ...]) -> None:
    model, x = shift_model(), volume((8, 8, 8))
    expected = torch.stack([
        torch.flip(softmax_of(model, torch.flip(x, [a + 1 for a in subset])), [a + 1 for a in subset])
        for r in range(len(axes) + 1) for subset in itertools.combinations(axes, r)]).mean(0)
    mirrored = predict_volume(model, x, (8, 8, 8), mirror_axes=axes)
    torch.testing.assert_close(mirrored, expected, rtol=0, atol=1e-6)
    # the model is not equivariant, so the average is not the plain prediction
    assert (mirrored - softmax_of(model, x)).abs().max() > 0.05
    torch.testing.assert_close(mirrored.sum(0), torch.ones(8, 8, 8))


def test_mirroring_changes_nothing_for_an_equivariant_model() -> None:
    # 12 voxels in y and x for windows of 8 at overlap 0.5: windows at 0 and 4, a grid symmetric under flips
    model, x = symmetric_model(), volume((8, 12, 12), seed=1)
    plain = predict_volume(model, x, (8, 8, 8))
    mirrored = predict_volume(model, x, (8, 8, 8), mirror_axes=(0, 1, 2))
    torch.testing.assert_close(mirrored, plain, rtol=0, atol=1e-5)
    assert (plain[1] - 0.5).abs().max() > 0.1  # the prediction is not trivially flat
