"""A network assembled from parts: input layers, then a backbone, then optional heads.

Learnable preprocessing (intensity, resampling or cropping layers trained with the model), a backbone
with pretrained weights, and task heads are separate modules; composing them keeps each part
replaceable and addressable (``net.backbone`` for loading weights, ``net.input_layers`` for plotting
what they learnt, :meth:`ComposedNetwork.parameter_groups` for a learning rate per part) while the
trainer sees one ``nn.Module``.

Example:
    >>> from torch import nn
    >>> net = ComposedNetwork([nn.Conv3d(2, 2, 1)], nn.Conv3d(2, 8, 3, padding=1),
    ...                       heads={"mask": nn.Conv3d(8, 2, 1)})
    >>> sorted(net(torch.zeros(1, 2, 8, 8, 8)))
    ['mask']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn


class ComposedNetwork(nn.Module):
    """``heads(backbone(input_layers(x)))``, with voxel-wise outputs mapped back through geometric input layers.

    An input layer that changes the grid (a resizer, a zoom, a region-of-interest crop: a
    :class:`~sarcomakit.models.preprocessing_layers.base.GeometricLayer`) maps every 5-D output (B, K, Z, Y, X)
    back onto its input's grid after the heads, in reverse order, so the network's output lies on the grid
    it was given; case-level outputs pass unchanged.

    Args:
        input_layers: applied in order to the input (may be empty).
        backbone: maps the transformed input to features (or to the output, without heads).
        heads: named modules applied to the backbone's output; the network then returns a dict of their
            outputs. Without heads it returns the backbone's output.
    """

    def __init__(self, input_layers: Sequence[nn.Module], backbone: nn.Module,
                 heads: Mapping[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.input_layers = nn.ModuleList(input_layers)
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads)) if heads else None

    def forward(self, x: torch.Tensor) -> Any:
        from sarcomakit.models.preprocessing_layers.base import GeometricLayer

        undo: list[tuple[GeometricLayer, Any]] = []
        for layer in self.input_layers:
            if isinstance(layer, GeometricLayer):
                x, context = layer.transform(x)
                undo.append((layer, context))
            else:
                x = layer(x)
        features = self.backbone(x)
        output = features if self.heads is None else {name: head(features) for name, head in self.heads.items()}
        for layer, context in reversed(undo):
            output = _restore_voxelwise(output, layer, context)
        return output

    def parameter_groups(self, learning_rates: Mapping[str, float]) -> list[dict[str, Any]]:
        """Optimizer parameter groups per part (``input_layers``, ``backbone``, ``heads``) with the given learning
        rates; parts not named use the optimizer's default rate."""
        parts = {"input_layers": self.input_layers, "backbone": self.backbone, "heads": self.heads}
        unknown = set(learning_rates) - set(parts)
        if unknown:
            raise ValueError(f"unknown part(s) {sorted(unknown)}; parts are {sorted(parts)}")
        groups = []
        for name, part in parts.items():
            if part is None:
                continue
            params = [p for p in part.parameters() if p.requires_grad]
            if params:
                group: dict[str, Any] = {"params": params, "name": name}
                if name in learning_rates:
                    group["lr"] = learning_rates[name]
                groups.append(group)
        return groups


def _restore_voxelwise(output: Any, layer: Any, context: Any) -> Any:
    """``output`` with each 5-D tensor mapped back by ``layer.restore`` (dicts: per entry)."""
    if isinstance(output, torch.Tensor):
        return layer.restore(output, context) if output.dim() == 5 else output
    if isinstance(output, dict):
        return {key: _restore_voxelwise(value, layer, context) for key, value in output.items()}
    return output
