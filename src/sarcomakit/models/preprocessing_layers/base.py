"""What every learnable preprocessing layer shares: the channels it acts on, and the geometric-layer contract.

An intensity layer maps (B, C, Z, Y, X) to (B, C', Z, Y, X) on the same grid. A geometric layer (resizer,
zoom, region-of-interest crop) moves the input onto another grid before the backbone, and must map the
network's voxel-wise output back onto the input grid afterwards, so that patches, sliding-window
inference and :func:`~sarcomakit.planning.preprocess.restore_to_input_geometry` see the grid they gave.
:class:`~sarcomakit.models.compose.ComposedNetwork` calls :meth:`GeometricLayer.transform` on the way in
and :meth:`GeometricLayer.restore` on every 5-D output on the way out, in reverse order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class InputLayer(nn.Module):
    """A preprocessing layer that knows how many channels and what spatial size it outputs, and may add an
    auxiliary loss to the task's (:meth:`auxiliary_loss`, e.g. the ROI crop's weak box loss).

    Args:
        in_channels: input channels.
        channels: indices of the channels it transforms (default: all); the others pass through unchanged.
    """

    auxiliary_loss_name = "auxiliary_loss"

    def __init__(self, in_channels: int, channels: Sequence[int] | None = None) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.channels = list(range(in_channels)) if channels is None else [int(c) for c in channels]
        bad = [c for c in self.channels if not 0 <= c < in_channels]
        if bad or not self.channels:
            raise ValueError(f"channels {self.channels} must be a non-empty subset of 0..{in_channels - 1}")

    @property
    def out_channels(self) -> int:
        return self.in_channels

    def auxiliary_loss(self, label: torch.Tensor) -> torch.Tensor | None:
        """A loss of the layer's last training forward pass against the batch's label map (B, 1, Z, Y, X) on
        the input grid, added to the task loss; None (the default) when the layer has none."""
        return None

    def out_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The spatial size (z, y, x) of the output for an input of ``size``."""
        return tuple(int(s) for s in size)


class GeometricLayer(InputLayer):
    """An input layer that changes the grid, and maps voxel-wise outputs back (module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)[0]

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The input on the layer's grid, and what :meth:`restore` needs to map outputs back."""
        raise NotImplementedError

    def restore(self, y: torch.Tensor, context: Any) -> torch.Tensor:
        """A voxel-wise output ``y`` on the layer's grid, mapped back onto the grid of the input."""
        raise NotImplementedError


def identity_grid_theta(batch: int, scale: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Affine matrices (B, 3, 4) for :func:`torch.nn.functional.affine_grid` from per-axis ``scale`` and
    ``shift`` given in (z, y, x) order, shape (3,) or (B, 3); ``affine_grid`` orders coordinates (x, y, z)."""
    scale = scale.expand(batch, 3) if scale.dim() == 1 else scale
    shift = torch.zeros_like(scale) if shift is None else (shift.expand(batch, 3) if shift.dim() == 1 else shift)
    theta = torch.zeros(batch, 3, 4, dtype=scale.dtype, device=scale.device)
    for row, axis in enumerate((2, 1, 0)):
        theta[:, row, row] = scale[:, axis]
        theta[:, row, 3] = shift[:, axis]
    return theta


def input_layer_losses(model: nn.Module, label: torch.Tensor) -> dict[str, torch.Tensor]:
    """The auxiliary losses of every input layer in ``model`` (any wrapper: DDP, a multi-task network) for the
    batch whose label map is ``label``, by layer name (``box_loss`` for a ROI crop's box loss)."""
    losses: dict[str, torch.Tensor] = {}
    for module in model.modules():
        if isinstance(module, InputLayer):
            loss = module.auxiliary_loss(label)
            if loss is not None:
                key = module.auxiliary_loss_name
                losses[key] = losses[key] + loss if key in losses else loss
    return losses
