"""OBELISK sampling (Heinrich et al. 2019): learnt sparse sampling positions, and the networks built on it.

Neither MONAI nor TorchIO has a deformable sparse-sampling layer, so it is written with ``grid_sample``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from sarcomakit.models.preprocessing_layers.base import InputLayer


class ObeliskSampling(InputLayer):
    """Deformable sparse sampling with learnable 3D offsets.

    For each output voxel ``v`` (a grid ``stride`` times coarser than the input, in normalised
    coordinates) and each of ``K`` offsets ``o_k``, every input channel is sampled trilinearly at
    ``v + o_k`` (``grid_sample``), giving ``C * K`` values per voxel; a grouped 1x1x1 convolution
    (``groups`` groups of offsets) then mixes them into ``features`` channels. The offsets are
    parameters of shape (K, 3), shared by every voxel: the layer learns *where* to look, as large and as
    sparse as the task needs, instead of a dense 3x3x3 neighbourhood.

    Initialisation: offsets uniform in ``±spread`` (normalised units, 0.1 ≈ a tenth of the patch), as in
    the OBELISK paper; the 1x1x1 convolution with PyTorch's default. It is not identity-initialised: it
    replaces the first convolutions, not a fixed preprocessing step.

    Args:
        in_channels: input channels.
        offsets: number of sampling offsets ``K``.
        features: output channels.
        groups: groups of the 1x1x1 convolution (divides ``K`` and ``features``).
        stride: output grid = input grid / stride (per axis).
        spread: half-range of the initial offsets.
        seed: seed of the initial offsets.
    """

    def __init__(self, in_channels: int, offsets: int = 32, features: int = 16, groups: int = 4, stride: int = 1,
                 spread: float = 0.1, seed: int = 0) -> None:
        super().__init__(in_channels)
        if offsets % groups or features % groups:
            raise ValueError(f"groups ({groups}) must divide offsets ({offsets}) and features ({features})")
        generator = torch.Generator().manual_seed(seed)
        self.offsets = nn.Parameter((torch.rand(offsets, 3, generator=generator) * 2 - 1) * spread)
        self.mix = nn.Conv3d(in_channels * offsets, features, 1, groups=groups)
        self.features = int(features)
        self.stride = int(stride)

    @property
    def out_channels(self) -> int:
        return self.features

    def out_size(self, size: Sequence[int]) -> tuple[int, ...]:
        return tuple(max(1, int(s) // self.stride) for s in size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        size = self.out_size(x.shape[2:])
        theta = torch.eye(3, 4, dtype=x.dtype, device=x.device).expand(batch, 3, 4)
        base = F.affine_grid(theta, [batch, 1, *size], align_corners=False)  # (B, D, H, W, 3), (x, y, z)
        grid = base.reshape(batch, 1, -1, 1, 3) + self.offsets.to(x.dtype).view(1, -1, 1, 1, 3)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # (B, C, K, N, 1) -> (B, K, C, N) offset-major so that each group holds whole offsets
        sampled = sampled.squeeze(-1).transpose(1, 2).reshape(batch, -1, *size)
        return self.mix(sampled)


class ObeliskNet(nn.Module):
    """OBELISK-Net: sparse sampling at half resolution, 1x1x1 convolutions, upsampled logits.

    ``logits = up(W_3 σ(W_2 σ(W_1 obelisk(x))))`` with ``σ`` instance norm + leaky ReLU, and ``up`` trilinear
    upsampling to the input size; a few hundred thousand parameters at most, most in the offsets' mixing.
    """

    def __init__(self, in_channels: int, out_channels: int, offsets: int = 64, features: int = 64,
                 hidden: int = 32, groups: int = 4) -> None:
        super().__init__()
        self.sampling = ObeliskSampling(in_channels, offsets=offsets, features=features, groups=groups, stride=2)
        self.head = nn.Sequential(
            nn.InstanceNorm3d(features, affine=True), nn.LeakyReLU(0.01), nn.Conv3d(features, hidden, 1),
            nn.InstanceNorm3d(hidden, affine=True), nn.LeakyReLU(0.01), nn.Conv3d(hidden, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(self.sampling(x)), size=x.shape[2:], mode="trilinear", align_corners=False)


class ObeliskUNet(nn.Module):
    """The hybrid: an OBELISK front end (full resolution) concatenated with the input, then a small MONAI
    residual U-Net. The front end gives the U-Net's first level a large, learnt receptive field."""

    def __init__(self, in_channels: int, out_channels: int, strides: Sequence[Sequence[int]],
                 channels: Sequence[int] = (8, 16, 32), offsets: int = 32, features: int = 16,
                 groups: int = 4) -> None:
        super().__init__()
        self.sampling = ObeliskSampling(in_channels, offsets=offsets, features=features, groups=groups, stride=1)
        self.unet = UNet(spatial_dims=3, in_channels=in_channels + features, out_channels=out_channels,
                         channels=tuple(channels), strides=[tuple(s) for s in strides],  # type: ignore[misc]
                         num_res_units=1, norm=("instance", {"affine": True}),
                         act=("leakyrelu", {"negative_slope": 0.01, "inplace": True}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(torch.cat([x, self.sampling(x)], dim=1))
