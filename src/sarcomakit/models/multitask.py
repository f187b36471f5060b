"""One network, three answers: tumour segmentation, histological grade and survival log-risk.

A registered segmentation backbone (the residual U-Net by default) gives the segmentation
logits; a forward hook reads its bottleneck features, which feed two small heads:

- features = [global average of the bottleneck | average under the predicted tumour
  (the tumour probability, detached, pooled to the bottleneck grid, as weights) | mean and
  standard deviation of each input channel under the predicted tumour, and the tumour's share
  of the patch (first-order "radiomics" the heads would otherwise have to rediscover through
  the segmentation-trained bottleneck, e.g. PET uptake for grade) | channel availability flags
  (1 = modality present, 0 = missing and zero-filled)];
- grade head: MLP -> 3 logits (nominal) or 2 cumulative logits (ordinal, low < intermediate < high);
- survival head: MLP -> 1 log-risk (Cox model, higher = worse).

Example:
    >>> net = build_multitask_network("resunet", in_channels=4, out_channels=2, patch_size=(32, 64, 64))
    >>> out = net(torch.zeros(1, 4, 32, 64, 64))   # {"segmentation", "grade", "log_risk"}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.simplelayers import SkipConnection
from torch import nn
from torch.nn import functional as F

from sarcomakit.core.errors import UserInputError
from sarcomakit.models.registry import build_network


def find_bottleneck(network: nn.Module) -> nn.Module:
    """The deepest block of a MONAI UNet (residual U-Net) or DynUNet, whose output are bottleneck features; of a
    network with learnable input layers (:class:`~sarcomakit.models.compose.ComposedNetwork`) or of the OBELISK
    hybrid, that of the U-Net inside."""
    if hasattr(network, "bottleneck") and isinstance(network.bottleneck, nn.Module):  # DynUNet
        return network.bottleneck
    for wrapped in ("backbone", "unet"):  # learnable input layers' ComposedNetwork; the OBELISK hybrid's U-Net
        inner = getattr(network, wrapped, None)
        if isinstance(inner, nn.Module) and (hasattr(network, "input_layers") or hasattr(network, "sampling")):
            return find_bottleneck(inner)
    module = getattr(network, "model", None)
    if module is None:
        raise UserInputError(f"the network {type(network).__name__} has no bottleneck the heads can read.",
                             fix="use the resunet or dynunet backbone for multi-task training.")
    while isinstance(module, nn.Sequential) and len(module) == 3 and isinstance(module[1], SkipConnection):
        module = module[1].submodule
    return module


class MultiTaskNet(nn.Module):
    """Segmentation backbone with grade and survival heads on its bottleneck (module docstring)."""

    def __init__(self, backbone: nn.Module, in_channels: int, *, n_grades: int = 3, ordinal: bool = False,
                 mask_pooling: bool = True, hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.in_channels = in_channels
        self.mask_pooling = mask_pooling
        self.ordinal = ordinal
        self._features: torch.Tensor | None = None
        find_bottleneck(backbone).register_forward_hook(self._keep_features)
        width = self._bottleneck_width(in_channels)
        n_features = width * (2 if mask_pooling else 1) + in_channels + (2 * in_channels + 1 if mask_pooling else 0)
        self.grade_head = nn.Sequential(nn.Linear(n_features, hidden), nn.LeakyReLU(0.01), nn.Dropout(dropout),
                                        nn.Linear(hidden, n_grades - 1 if ordinal else n_grades))
        self.survival_head = nn.Sequential(nn.Linear(n_features, hidden), nn.LeakyReLU(0.01), nn.Dropout(dropout),
                                           nn.Linear(hidden, 1))

    def _keep_features(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self._features = output

    def _bottleneck_width(self, in_channels: int) -> int:
        probe = find_bottleneck(self.backbone)
        convs = [m for m in probe.modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]
        if not convs:
            raise UserInputError("cannot infer the bottleneck width of this backbone.",
                                 fix="use the resunet or dynunet backbone for multi-task training.")
        return convs[-1].out_channels

    def pooled_features(self, x: torch.Tensor, segmentation_logits: torch.Tensor,
                        available: torch.Tensor) -> torch.Tensor:
        features = self._features
        assert features is not None, "forward the backbone first"
        pooled = [features.mean(dim=(2, 3, 4))]
        if self.mask_pooling:
            tumour = torch.softmax(segmentation_logits.detach().float(), 1)[:, 1:].sum(1, keepdim=True)
            grid = (features.shape[2], features.shape[3], features.shape[4])
            weights = F.adaptive_avg_pool3d(tumour, grid).to(features.dtype)
            pooled.append((features * weights).sum(dim=(2, 3, 4)) / weights.sum(dim=(2, 3, 4)).clamp_min(1e-3))
            mass = tumour.sum(dim=(2, 3, 4)).clamp_min(1e-3)
            mean = (x.float() * tumour).sum(dim=(2, 3, 4)) / mass
            var = ((x.float() - mean[..., None, None, None]) ** 2 * tumour).sum(dim=(2, 3, 4)) / mass
            pooled += [mean.to(features.dtype), var.clamp_min(0).sqrt().to(features.dtype),
                       tumour.mean(dim=(2, 3, 4)).to(features.dtype)]
        return torch.cat([*pooled, available.to(features.dtype)], dim=1)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``{"segmentation": (B,K,...), "grade": (B,3|2), "log_risk": (B,)}``; ``available`` (B,C) defaults to ones."""
        if available is None:
            available = torch.ones(x.shape[0], self.in_channels, device=x.device)
        segmentation = self.backbone(x)
        features = self.pooled_features(x, segmentation, available)
        self._features = None
        return {"segmentation": segmentation, "grade": self.grade_head(features),
                "log_risk": self.survival_head(features).reshape(-1)}


def build_multitask_network(backbone: str, *, in_channels: int, out_channels: int, patch_size: Sequence[int],
                            ordinal: bool = False, mask_pooling: bool = True, hidden: int = 64,
                            dropout: float = 0.2, **backbone_options: object) -> MultiTaskNet:
    """A :class:`MultiTaskNet` on the registered segmentation network ``backbone``."""
    network = build_network(backbone, in_channels=in_channels, out_channels=out_channels, patch_size=patch_size,
                            **backbone_options)
    return MultiTaskNet(network, in_channels, ordinal=ordinal, mask_pooling=mask_pooling, hidden=hidden,
                        dropout=dropout)
