"""Learnable resampling and cropping: a learned resizer, learnable per-axis zoom, a spatial-transformer crop.

Each is a :class:`~sarcomakit.models.preprocessing_layers.base.GeometricLayer`: it moves the input onto
its own grid for the backbone and maps voxel-wise outputs back. MONAI's ``Resize``/``Zoom``/``SpatialCrop``
are fixed transforms without gradients to their parameters, so these are written with torch's
``interpolate``, ``affine_grid`` and ``grid_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sarcomakit.models.preprocessing_layers.base import GeometricLayer, identity_grid_theta


def _resample(x: torch.Tensor, theta: torch.Tensor, size: Sequence[int], padding: str = "border") -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class LearnedResizer(GeometricLayer):
    """A learned resizer (Talebi & Milanfar 2021): a trilinear resampling plus a learnt residual.

    ``y = r(x) + g(r(x))`` where ``r`` is trilinear resampling by the fixed per-axis ``scale`` (output size
    ``round(size * scale)``) and ``g`` a small residual CNN (two 3x3x3 convolutions, ``hidden`` channels,
    leaky ReLU) whose last layer starts at zero. Initialisation: exactly the trilinear resampling it
    replaces (the plan's resampling to the target spacing when ``scale`` is native / target spacing).
    What it learns: the detail the interpolation loses or the network needs (edges, thin structures).
    Outputs are mapped back by trilinear resampling to the input size.

    Args:
        in_channels: input channels (all are resized; the residual acts on ``channels``).
        scale: output / input size per axis (z, y, x).
        hidden: channels of the residual CNN.
    """

    def __init__(self, in_channels: int, scale: Sequence[float] = (1.0, 1.0, 1.0), hidden: int = 8,
                 channels: Sequence[int] | None = None) -> None:
        super().__init__(in_channels, channels)
        self.scale = tuple(float(s) for s in scale)
        if len(self.scale) != 3 or min(self.scale) <= 0:
            raise ValueError("scale needs three positive factors (z, y, x)")
        self.residual = nn.Sequential(nn.Conv3d(in_channels, hidden, 3, padding=1), nn.LeakyReLU(0.01),
                                      nn.Conv3d(hidden, len(self.channels), 3, padding=1))
        last = self.residual[-1]
        assert isinstance(last, nn.Conv3d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def out_size(self, size: Sequence[int]) -> tuple[int, ...]:
        return tuple(max(1, round(int(s) * f)) for s, f in zip(size, self.scale, strict=True))

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        size = tuple(x.shape[2:])
        target = self.out_size(size)
        resized = x if target == size else F.interpolate(x, size=target, mode="trilinear", align_corners=False)
        out = resized.clone()
        out[:, self.channels] = resized[:, self.channels] + self.residual(resized)
        return out, size

    def restore(self, y: torch.Tensor, context: Any) -> torch.Tensor:
        size = tuple(context)
        return y if tuple(y.shape[2:]) == size else F.interpolate(y, size=size, mode="trilinear",
                                                                  align_corners=False)


class LearnableZoom(GeometricLayer):
    """Learnable per-axis zoom through ``affine_grid``/``grid_sample``: the effective target spacing is learnt.

    The output keeps the input's voxel count; output voxel ``u`` (normalised coordinates) samples the
    input at ``u * exp(-z)`` per axis, so ``exp(z) > 1`` magnifies (finer effective spacing, smaller field
    of view) and ``exp(z) < 1`` shrinks; the effective spacing is ``native spacing / exp(z)``. Outputs
    are mapped back with the inverse zoom (border values beyond the field of view).

    Initialisation: ``z = log(initial)`` (default 1: the minimal pipeline's native grid, reproduced
    exactly). What it learns: one zoom per axis for the whole cohort. The slice axis of anisotropic
    scans (``fixed_axes``, the plan's ``low_res_axis``) is kept at its initial zoom by default:
    interpolating a few thick slices invents content, and a learnt zoom there mostly trades field of
    view for blur.

    Args:
        in_channels: input channels.
        initial: initial zoom per axis (z, y, x).
        fixed_axes: axes whose zoom is not learnt.
    """

    learnt: torch.Tensor
    initial_log_zoom: torch.Tensor

    def __init__(self, in_channels: int, initial: Sequence[float] = (1.0, 1.0, 1.0),
                 fixed_axes: Sequence[int] = ()) -> None:
        super().__init__(in_channels)
        self.log_zoom = nn.Parameter(torch.tensor([math.log(float(v)) for v in initial]))
        mask = torch.ones(3)
        for axis in fixed_axes:
            mask[int(axis)] = 0.0
        self.register_buffer("learnt", mask)
        self.register_buffer("initial_log_zoom", self.log_zoom.detach().clone())

    def zoom(self) -> torch.Tensor:
        """The current zoom per axis (z, y, x); fixed axes keep their initial value."""
        return torch.exp(self.initial_log_zoom + self.learnt * (self.log_zoom - self.initial_log_zoom))

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        zoom = self.zoom().to(x.dtype)
        return _resample(x, identity_grid_theta(x.shape[0], 1.0 / zoom), x.shape[2:]), zoom

    def restore(self, y: torch.Tensor, context: Any) -> torch.Tensor:
        return _resample(y, identity_grid_theta(y.shape[0], context), y.shape[2:])


class ROICrop(GeometricLayer):
    """A spatial-transformer region-of-interest crop (Jaderberg et al. 2015) with its inverse.

    A localisation network (average-pooled input, two strided convolutions, global pooling, a linear
    layer) predicts per case a centre ``c`` in (-1, 1) (``tanh``) and a half-width
    ``h = m + (1 - m) exp(s)`` per axis (``m = min_scale``); the ROI is the box ``c ± h`` in normalised
    coordinates, resampled by ``grid_sample`` onto a grid of the input's size: output ``u`` reads the
    input at ``c + h u``. :meth:`restore` maps outputs back by the inverse affine map ``(v - c) / h``;
    outside the ROI it gives background logits (``outside_logit`` for class 0, 0 for the others: class 0
    is background by the label convention).

    Initialisation: the linear layer starts at zero, so ``c = 0``, ``h = 1``: the whole input, the
    identity crop. What it learns, from the task loss alone: where the tumour is and how large a box it
    needs, i.e. to spend the backbone's voxels on the region that matters.

    Weak box loss (``box_weight > 0``): in training, the predicted box is also pulled towards the
    foreground's bounding box in the patch's label map, enlarged by ``box_margin`` (at least ``min_scale``):
    ``box_weight * (|c - c*|_1 + |log h - log h*|_1) / 3`` averaged over the patches that hold foreground
    (:meth:`auxiliary_loss`; a patch without foreground adds nothing). The task loss alone reaches the box
    only through the voxels it moves in or out of view; the box loss gives the localisation network a direct
    target from the first step. The target is exact when no geometric layer that moves normalised
    coordinates (a zoom) comes before the crop.

    Stability: the localisation network sees an instance-normalised input (whatever the layers before it
    output), and its output is scaled by ``rate``. Without both, a box that jumps off the tumour early
    saturates ``tanh`` in a corner, where the task loss no longer reaches it (seen in 2 of 3 folds of the
    preprocessing experiment with every layer together).

    Args:
        in_channels: input channels.
        hidden: channels of the localisation network.
        min_scale: the smallest half-width of the box (normalised), so the crop cannot collapse.
        outside_logit: background logit given outside the ROI on restore.
        rate: factor on the localisation network's output: the box moves ``rate`` times slower than the
            backbone learns (with Adam, about a ``rate`` times smaller learning rate).
        box_weight: weight of the weak box loss (0: the task loss alone).
        box_margin: the target box's half-width as a multiple of the foreground's.
    """

    auxiliary_loss_name = "box_loss"

    def __init__(self, in_channels: int, hidden: int = 8, min_scale: float = 0.25,
                 outside_logit: float = 10.0, rate: float = 0.1, box_weight: float = 0.0,
                 box_margin: float = 1.25) -> None:
        super().__init__(in_channels)
        if box_weight < 0 or box_margin < 1:
            raise ValueError(f"box_weight must be >= 0 and box_margin >= 1 (got {box_weight}, {box_margin})")
        self.localisation = nn.Sequential(
            nn.AdaptiveAvgPool3d(16), nn.InstanceNorm3d(in_channels),
            nn.Conv3d(in_channels, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.01),
            nn.Conv3d(hidden, hidden, 3, stride=2, padding=1), nn.LeakyReLU(0.01), nn.AdaptiveAvgPool3d(1),
            nn.Flatten(), nn.Linear(hidden, 6))
        head = self.localisation[-1]
        assert isinstance(head, nn.Linear)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.min_scale = float(min_scale)
        self.outside_logit = float(outside_logit)
        self.rate = float(rate)
        self.box_weight = float(box_weight)
        self.box_margin = float(box_margin)
        self._training_box: tuple[torch.Tensor, torch.Tensor] | None = None

    def box(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre (B, 3) and half-width (B, 3), (z, y, x), normalised to (-1, 1), of each case's ROI."""
        out = self.rate * self.localisation(x)
        centre = torch.tanh(out[:, :3])
        scale = self.min_scale + (1.0 - self.min_scale) * torch.exp(out[:, 3:])
        return centre, scale

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        centre, scale = self.box(x)
        # kept for the box loss of this training step only (never in evaluation, so nothing holds a graph)
        self._training_box = (centre, scale) if self.training and self.box_weight > 0 else None
        return self.crop(x, centre, scale), (centre, scale)

    def auxiliary_loss(self, label: torch.Tensor) -> torch.Tensor | None:
        """The weak box loss of the last training forward pass (class docstring); None when it is off."""
        if self._training_box is None:
            return None
        centre, scale = self._training_box
        self._training_box = None
        target_centre, target_scale, has_foreground = foreground_box(label, self.box_margin, self.min_scale)
        if not bool(has_foreground.any()):
            return centre.sum() * 0.0
        error = ((centre - target_centre).abs() + (scale.log() - target_scale.log()).abs()).mean(dim=1)
        return self.box_weight * error[has_foreground].mean()

    @staticmethod
    def crop(x: torch.Tensor, centre: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The box ``centre ± scale`` of ``x`` resampled onto a grid of ``x``'s size."""
        return _resample(x, identity_grid_theta(x.shape[0], scale, centre), x.shape[2:], padding="zeros")

    def restore(self, y: torch.Tensor, context: Any) -> torch.Tensor:
        centre, scale = context
        theta = identity_grid_theta(y.shape[0], 1.0 / scale, -centre / scale)
        back = _resample(y, theta, y.shape[2:], padding="zeros")
        inside = _resample(torch.ones_like(y[:, :1]), theta, y.shape[2:], padding="zeros")
        outside = torch.zeros_like(y[:1, :, :1, :1, :1])
        outside[:, 0] = self.outside_logit
        return inside * back + (1.0 - inside) * outside


def foreground_box(label: torch.Tensor, margin: float = 1.0,
                   min_half_width: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per case, the bounding box of ``label > 0`` (B, 1, Z, Y, X) in ``grid_sample``'s normalised coordinates
    (``align_corners=False``: voxel ``i`` of ``n`` spans ``[2i/n - 1, 2(i+1)/n - 1]``), (z, y, x): centre (B, 3),
    half-width (B, 3) times ``margin`` and at least ``min_half_width``, and whether the case has foreground (B,).
    Cases without foreground get the whole grid (centre 0, half-width 1)."""
    foreground = label.reshape(label.shape[0], *label.shape[-3:]) > 0
    batch = foreground.shape[0]
    centre = torch.zeros(batch, 3, device=label.device)
    half = torch.ones(batch, 3, device=label.device)
    has = foreground.flatten(1).any(dim=1)
    for axis in range(3):
        size = foreground.shape[1 + axis]
        present = foreground.any(dim=[d for d in (1, 2, 3) if d != 1 + axis])  # (B, size)
        index = torch.arange(size, device=label.device).expand(batch, size)
        low = torch.where(present, index, size).amin(dim=1).float()
        high = torch.where(present, index, -1).amax(dim=1).float() + 1.0
        centre[:, axis] = torch.where(has, (low + high) / size - 1.0, 0.0)
        half[:, axis] = torch.where(has, (high - low) / size * margin, 1.0)
    return centre, half.clamp_min(min_half_width), has
