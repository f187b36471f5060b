"""Registry of segmentation networks, built by name from the plan and the training config.

Every factory takes ``in_channels``, ``out_channels`` and ``patch_size`` (z, y, x) plus its own
keyword options, and returns a ``torch.nn.Module`` mapping (B, in, Z, Y, X) to (B, out, Z, Y, X) logits.
The defaults use instance normalisation and leaky ReLU rather than MONAI's BatchNorm/PReLU
defaults, because those do not work with per-sample gradient clipping (differential privacy).

Example:
    >>> net = build_network("resunet", in_channels=4, out_channels=2, patch_size=(32, 64, 64))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import DynUNet, SegResNet, UNet

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.registry import Registry

NetworkFactory = Callable[..., torch.nn.Module]
#: Network factories by name (see :mod:`sarcomakit.core.registry` for the naming rules).
NETWORKS: Registry[NetworkFactory] = Registry("network", option="--network")


def register_network(name: str) -> Callable[[NetworkFactory], NetworkFactory]:
    """Decorator adding a network factory under ``name`` (a taken name raises ``ValueError``)."""
    return NETWORKS.register(name)


def available_networks() -> list[str]:
    return NETWORKS.names()


def build_network(name: str, *, in_channels: int, out_channels: int, patch_size: Sequence[int],
                  **options: object) -> torch.nn.Module:
    """Build the network registered as ``name`` (an unknown name is a user error listing the networks).

    With ``input_layers`` among the options (learnable preprocessing, see
    :mod:`sarcomakit.models.preprocessing_layers`), those layers are built and put in front of the network
    in a :class:`~sarcomakit.models.compose.ComposedNetwork`; the network is then built for the channels
    and patch size the layers output. Every task that builds its network here gets them.
    """
    specs = options.pop("input_layers", None)
    if specs:
        from sarcomakit.models.compose import ComposedNetwork
        from sarcomakit.models.preprocessing_layers import build_input_layers

        if not isinstance(specs, list | tuple):
            raise UserInputError("input_layers must be a list of {'layer': NAME, ...} entries.",
                                 fix='e.g. network_options={"input_layers": [{"layer": "normaliser"}]}.')
        layers = build_input_layers(specs, in_channels)
        size = tuple(int(p) for p in patch_size)
        for layer in layers:
            size = layer.out_size(size)
        backbone = NETWORKS.get(name)(in_channels=layers[-1].out_channels, out_channels=out_channels,
                                      patch_size=size, **options)
        return ComposedNetwork(layers, backbone)
    return NETWORKS.get(name)(in_channels=in_channels, out_channels=out_channels, patch_size=tuple(patch_size),
                           **options)


def _strides_for(patch_size: Sequence[int], levels: int) -> list[tuple[int, ...]]:
    """Per-level strides that halve each axis while it stays >= 8 voxels (keeps thick-slice axes coarse)."""
    sizes = list(patch_size)
    strides = []
    for _ in range(levels):
        step = tuple(2 if s >= 16 else 1 for s in sizes)
        sizes = [s // st for s, st in zip(sizes, step, strict=True)]
        strides.append(step)
    return strides


@register_network("resunet")
def residual_unet(*, in_channels: int, out_channels: int, patch_size: Sequence[int],
                  channels: Sequence[int] = (16, 32, 64, 128, 256), num_res_units: int = 2,
                  dropout: float = 0.0) -> torch.nn.Module:
    """MONAI's residual U-Net (Kerfoot et al. 2018) with instance norm and leaky ReLU (the default)."""
    return UNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, channels=tuple(channels),
                # MONAI annotates strides as Sequence[int], but a (z, y, x) tuple per level is supported
                strides=_strides_for(patch_size, len(channels) - 1),  # type: ignore[arg-type]
                num_res_units=num_res_units,
                norm=("instance", {"affine": True}), act=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
                dropout=dropout)


@register_network("dynunet")
def dynamic_unet(*, in_channels: int, out_channels: int, patch_size: Sequence[int],
                 filters: Sequence[int] = (32, 64, 128, 256, 320)) -> torch.nn.Module:
    """MONAI's DynUNet, the nnU-Net architecture (plain conv blocks, anisotropic strides from the patch)."""
    strides = [(1, 1, 1), *_strides_for(patch_size, len(filters) - 1)]
    kernels = [tuple(3 for _ in s) for s in strides]
    return DynUNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels, kernel_size=kernels,
                   strides=strides, upsample_kernel_size=strides[1:], filters=list(filters),
                   norm_name=("instance", {"affine": True}), act_name=("leakyrelu", {"negative_slope": 0.01}),
                   res_block=True)


@register_network("segresnet")
def segmentation_resnet(*, in_channels: int, out_channels: int, patch_size: Sequence[int],
                        init_filters: int = 16) -> torch.nn.Module:
    """MONAI's SegResNet (Myronenko 2018) with group norm; the patch must be divisible by 8."""
    return SegResNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                     init_filters=init_filters, norm=("group", {"num_groups": 8}))


def _check_divisible(name: str, patch_size: Sequence[int], divisor: int) -> None:
    if any(int(p) % divisor for p in patch_size):
        raise UserInputError(f"{name} needs every patch axis divisible by {divisor}; the patch is {list(patch_size)}.",
                             fix=f"plan with --patch-size set to multiples of {divisor}, or train --patch-size.")


@register_network("swinunetr")
def swin_unetr(*, in_channels: int, out_channels: int, patch_size: Sequence[int], feature_size: int = 48,
               depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
               use_v2: bool = False) -> torch.nn.Module:
    """MONAI's SwinUNETR (Hatamizadeh et al. 2022); loads MONAI's self-supervised Swin weights with ``--init``."""
    from monai.networks.nets import SwinUNETR

    _check_divisible("swinunetr", patch_size, 32)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size,
                     depths=tuple(depths), num_heads=tuple(num_heads), norm_name="instance", use_v2=use_v2)


@register_network("unetr")
def unet_transformer(*, in_channels: int, out_channels: int, patch_size: Sequence[int], feature_size: int = 16,
                     hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12) -> torch.nn.Module:
    """MONAI's UNETR (Hatamizadeh et al. 2022), a ViT-B/16 encoder on the whole patch; loads ViTAutoEnc weights."""
    from monai.networks.nets import UNETR
    from monai.utils import OptionalImportError

    _check_divisible("unetr", patch_size, 16)
    try:
        return UNETR(in_channels=in_channels, out_channels=out_channels, img_size=tuple(patch_size),
                     feature_size=feature_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
                     norm_name="instance")
    except OptionalImportError as exc:
        raise UserInputError("MONAI's transformers need the einops package.", fix="pip install einops") from exc


@register_network("obelisk")
def obelisk_net(*, in_channels: int, out_channels: int, patch_size: Sequence[int], offsets: int = 64,
                features: int = 64, hidden: int = 32, groups: int = 4) -> torch.nn.Module:
    """OBELISK-Net (Heinrich et al. 2019): learnt sparse sampling and 1x1x1 convolutions, few parameters."""
    from sarcomakit.models.preprocessing_layers.obelisk import ObeliskNet

    return ObeliskNet(in_channels, out_channels, offsets=offsets, features=features, hidden=hidden, groups=groups)


@register_network("obelisk_unet")
def obelisk_unet(*, in_channels: int, out_channels: int, patch_size: Sequence[int],
                 channels: Sequence[int] = (8, 16, 32), offsets: int = 32, features: int = 16,
                 groups: int = 4) -> torch.nn.Module:
    """The hybrid: an OBELISK sampling front end and a small residual U-Net (MONAI)."""
    from sarcomakit.models.preprocessing_layers.obelisk import ObeliskUNet

    return ObeliskUNet(in_channels, out_channels, _strides_for(patch_size, len(channels) - 1), channels=channels,
                       offsets=offsets, features=features, groups=groups)
