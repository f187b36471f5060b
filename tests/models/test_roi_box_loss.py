"""The ROI crop's weak box loss: its target box (analytic), its training signal, and its place in the task loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sarcomakit.losses.segmentation import dice_ce_loss
from sarcomakit.models import ComposedNetwork
from sarcomakit.models.preprocessing_layers import ROICrop
from sarcomakit.models.preprocessing_layers.base import input_layer_losses
from sarcomakit.models.preprocessing_layers.spatial import foreground_box
from sarcomakit.tasks.segmentation import SegmentationObjective


def _label(size: int = 8, box: tuple[slice, slice, slice] = (slice(2, 4), slice(0, 8), slice(5, 6))) -> torch.Tensor:
    label = torch.zeros(1, 1, size, size, size, dtype=torch.long)
    label[(0, 0, *box)] = 1
    return label


def test_foreground_box_in_normalised_coordinates() -> None:
    """Voxels 2..3 of 8 span [-0.5, 0]; 0..7 span [-1, 1]; voxel 5 spans [0.25, 0.5] (align_corners=False)."""
    label = torch.cat([_label(), torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)])
    centre, half, has = foreground_box(label, margin=1.0)
    torch.testing.assert_close(centre[0], torch.tensor([-0.25, 0.0, 0.375]))
    torch.testing.assert_close(half[0], torch.tensor([0.25, 1.0, 0.125]))
    assert has.tolist() == [True, False]
    torch.testing.assert_close(centre[1], torch.zeros(3))  # no foreground: the whole grid
    torch.testing.assert_close(half[1], torch.ones(3))
    _, enlarged, _ = foreground_box(label, margin=2.0, min_half_width=0.3)
    torch.testing.assert_close(enlarged[0], torch.tensor([0.5, 2.0, 0.3]))


def test_box_loss_moves_the_crop_onto_the_tumour() -> None:
    """Trained on the box loss alone, the localisation network finds the bright block the label marks; the
    crop then holds it at the centre of its grid."""
    torch.manual_seed(0)
    images, labels = [], []
    for offset in (1, 3, 5):
        box = (slice(offset, offset + 3), slice(8 - offset - 3, 8 - offset), slice(2, 5))
        label = _label(box=box)
        images.append(label.float() * 4.0 + 0.1 * torch.randn(1, 1, 8, 8, 8))
        labels.append(label)
    x, label = torch.cat(images), torch.cat(labels)
    layer = ROICrop(1, hidden=8, rate=1.0, box_weight=1.0, box_margin=1.0, min_scale=0.1)
    target_centre, target_half, _ = foreground_box(label, 1.0, 0.1)
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.02)
    for _ in range(300):
        optimiser.zero_grad()
        layer(x)
        loss = input_layer_losses(layer, label)["box_loss"]
        loss.backward()
        optimiser.step()
    layer.eval()
    with torch.no_grad():
        centre, half = layer.box(x)
        cropped = layer(x)
    assert float((centre - target_centre).abs().max()) < 0.15
    assert float((half.log() - target_half.log()).abs().max()) < 0.25
    assert float(cropped[:, :, 3:5, 3:5, 3:5].mean()) > 3.0  # the tumour fills the crop's centre


def test_box_loss_is_off_by_default_and_out_of_training() -> None:
    x, label = torch.randn(1, 1, 8, 8, 8), _label()
    plain = ROICrop(1)
    plain(x)
    assert input_layer_losses(plain, label) == {}
    boxed = ROICrop(1, box_weight=1.0).eval()
    boxed(x)
    assert input_layer_losses(boxed, label) == {}  # evaluation keeps no box (and no graph)
    with pytest.raises(ValueError):
        ROICrop(1, box_margin=0.5)


def test_segmentation_objective_adds_and_logs_the_box_loss() -> None:
    torch.manual_seed(0)
    crop = ROICrop(1, box_weight=0.5)
    nn.init.normal_(crop.localisation[-1].weight, std=0.5)
    model = ComposedNetwork([crop], nn.Conv3d(1, 2, 3, padding=1))
    batch = {"image": torch.randn(2, 1, 8, 8, 8), "label": torch.cat([_label(), _label(box=(slice(0, 8),) * 3)])}
    out = SegmentationObjective()(model, batch, torch.device("cpu"))
    assert out.parts["box_loss"] > 0
    model.eval()  # the same forward without the box loss
    with torch.no_grad():
        task = dice_ce_loss()(model(batch["image"]), batch["label"])
    assert float(out.total.detach()) == pytest.approx(float(task) + out.parts["box_loss"], rel=1e-5)
    out.total.backward()
    assert float(crop.localisation[-1].weight.grad.abs().sum()) > 0
