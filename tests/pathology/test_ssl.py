"""SimCLR pretraining: NT-Xent maths, augmentation ranges, loss decreasing, checkpoint reloadable."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from sarcomakit.pathology.features.encoders import build_encoder
from sarcomakit.pathology.features.ssl import ViewAugment, nt_xent_loss, pretrain_encoder


def test_nt_xent_analytic_values() -> None:
    z = torch.eye(4)
    # Views identical and orthogonal to the others: loss = -log(e^{1/t} / (e^{1/t} + 6 e^0)).
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 6))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected, rel=1e-5)
    # Swapping the partners makes the positives the least similar: the loss rises.
    assert nt_xent_loss(z, z[[1, 0, 3, 2]], t) > nt_xent_loss(z, z, t)


def test_views_stay_in_range_and_change_the_tile() -> None:
    tiles = torch.rand(6, 3, 40, 40)
    views = ViewAugment(32)(tiles, torch.Generator().manual_seed(0))
    assert views.shape == (6, 3, 32, 32)
    assert views.min() >= 0 and views.max() <= 1
    resized = torch.nn.functional.interpolate(tiles, size=32, mode="bilinear")
    assert (views - resized).abs().mean() > 0.01


def test_hue_rotation_by_zero_is_identity() -> None:
    x = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(ViewAugment._rotate_hue(x, torch.zeros(2)), x, atol=1e-5, rtol=1e-5)


def _textured_tiles(n: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    tiles = []
    for i in range(n):
        freq = 0.2 + 0.15 * (i % 4)
        stripes = 0.5 + 0.4 * torch.sin(freq * (xx if i % 2 else yy) + i)
        colour = torch.tensor([0.9, 0.3 + 0.1 * (i % 3), 0.7])[:, None, None]
        tiles.append((stripes * colour + 0.05 * torch.rand(3, size, size, generator=g)).clamp(0, 1))
    return torch.stack(tiles)


def test_loss_decreases_and_checkpoint_reloads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", input_size=32, embed_dim=32, base_width=8)
    stain_calls = []

    def stain(tile: torch.Tensor) -> torch.Tensor:
        stain_calls.append(1)
        return tile

    result = pretrain_encoder(_textured_tiles(16), encoder, epochs=40, batch_size=8, lr=3e-3, stain=stain,
                              out_path=tmp_path / "ssl.pt", encoder_options={"embed_dim": 32, "base_width": 8})
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 0.15, (first, last)
    assert stain_calls  # the stain augmentation was applied
    restored = build_encoder("small_cnn", weights=result.checkpoint)
    assert restored.input_size == 32 and restored.embed_dim == 32
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(restored.embed(x), result.encoder.embed(x))
