"""SimMIM (Xie et al. 2022) around SwinUNETR's Swin transformer: masked blocks replaced by a learnt token after the
patch embedding, a light linear decoder predicting their voxels.

The Swin transformer embeds 2³-voxel patches. The mask is drawn on a coarser grid of ``block``³-voxel blocks
(default 16³, i.e. 8³ embedded patches each, ``ratio`` 0.6 of them), as SimMIM masks 32-pixel blocks of a Swin
with 4-pixel patches: a masked embedded patch whose neighbours are all visible would be filled in by
interpolation, not by understanding. Every embedded patch of a masked block is replaced by one learnt
``mask_token`` and the transformer runs on all of them; windowed attention and patch merging carry the context.

The decoder maps the deepest stage (stride 32, ``16 · feature_size`` channels) back to the voxels. SimMIM's single
1×1×1 convolution to ``32³ · C`` channels followed by a pixel shuffle would need ``16 · feature_size · 32³ · C``
weights in 3D (100 million at feature size 48 and four channels), so the head is the one of the Swin-UNETR
self-supervised pretraining (Tang et al. 2022, its ``deconv`` head): five 2×2×2 transposed convolutions halving
the channels, without activations. It is still a linear map from each deepest feature to its 32³ voxels, a
low-rank factorisation of SimMIM's linear head, so the encoder, not the decoder, must do the work. The loss
(mean absolute error) is taken on the voxels of masked blocks only.

The transformer is SwinUNETR's own ``swinViT`` module, kept under that name, so every pretrained ``swinViT.*``
tensor carries over to ``sarcomakit train --network swinunetr --init RUN`` unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from sarcomakit.models.simmim import patchify, random_token_mask


class SimMIMSwin(nn.Module):
    """SimMIM on MONAI's ``SwinTransformer`` (``SwinUNETR(...).swinViT``).

    Args:
        swin: the transformer (MONAI's ``SwinTransformer``; typed loosely: its submodules are read by name).
        in_channels: image channels (the decoder predicts each of them).
        block: mask block edge in voxels (a multiple of the 2-voxel patch embedding that divides the patch).
        mask_ratio: fraction of blocks masked in each sample when :meth:`forward` draws the mask itself.
        normalize: layer-normalise the stage outputs, as SwinUNETR does (its ``normalize`` option).

    Example:
        >>> swin = build_network("swinunetr", in_channels=2, out_channels=1, patch_size=[32] * 3,  # doctest: +SKIP
        ...                      feature_size=12).swinViT
        >>> prediction, mask = SimMIMSwin(swin, 2)(torch.randn(1, 2, 32, 32, 32))  # doctest: +SKIP
        >>> prediction.shape, mask.shape  # doctest: +SKIP
        (torch.Size([1, 8, 8192]), torch.Size([1, 8]))
    """

    swinViT: Any  # noqa: N815  (SwinUNETR's attribute name: the tensors keep SwinUNETR's keys)

    def __init__(self, swin: Any, in_channels: int, *, block: int = 16, mask_ratio: float = 0.6,
                 normalize: bool = True) -> None:
        super().__init__()
        self.swinViT = swin
        self.embed_stride = int(swin.patch_embed.patch_size[0])
        if block % self.embed_stride:
            raise ValueError(f"the mask block {block} is not a multiple of the {self.embed_stride}-voxel patches")
        self.block = int(block)
        self.mask_ratio = float(mask_ratio)
        self.normalize = bool(normalize)
        embed_dim = int(swin.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim, 1, 1, 1))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        stages = int(swin.num_layers)  # each stage ends with a 2x patch merging
        channels = [embed_dim * 2**stages // 2**i for i in range(stages + 1)]
        upsamplings = stages + int(math.log2(self.embed_stride))
        channels += [channels[-1]] * (upsamplings - stages - 1) + [in_channels]
        self.decoder = nn.Sequential(*[nn.ConvTranspose3d(a, b, kernel_size=2, stride=2)
                                       for a, b in zip(channels[:-1], channels[1:], strict=True)])
        self._embedding_mask: torch.Tensor | None = None
        # MONAI's SwinTransformer.forward runs patch_embed -> pos_drop -> stages in one piece and takes no mask, so
        # the masked embeddings are swapped in by a forward hook on its patch_embed: MONAI's forward (v1, v2) is
        # used as it is, and no tensor is renamed (a wrapper module around patch_embed would change the keys
        # swinViT.patch_embed.* that SwinUNETR loads).
        swin.patch_embed.register_forward_hook(self._replace_masked_embeddings)

    def _replace_masked_embeddings(self, module: nn.Module, args: Any, embedding: torch.Tensor) -> torch.Tensor | None:
        """The patch embedding ``(B, E, z, y, x)`` with the mask token at the masked positions (only inside
        :meth:`forward`; a plain call of the transformer is left alone)."""
        if self._embedding_mask is None:
            return None
        return torch.where(self._embedding_mask, self.mask_token.to(embedding.dtype), embedding)

    def random_mask(self, batch: int, n_blocks: int, device: torch.device) -> torch.Tensor:
        """``(B, N)`` bool with exactly ``round(ratio * N)`` blocks masked per sample (torch's global generator)."""
        return random_token_mask(batch, n_blocks, self.mask_ratio, device)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted voxels of every block ``(B, N, C * block³)`` and the block mask used ``(B, N)``, 1 = masked
        (blocks in z, y, x order, as :func:`~sarcomakit.models.simmim.patchify` cuts the image)."""
        grid = [int(s) // self.block for s in image.shape[2:]]
        if any(g * self.block != s for g, s in zip(grid, image.shape[2:], strict=True)):
            raise ValueError(f"the patch {list(image.shape[2:])} is not a multiple of the {self.block}-voxel blocks")
        if mask is None:
            mask = self.random_mask(image.shape[0], math.prod(grid), image.device)
        per_block = self.block // self.embed_stride
        embedding_mask = mask.reshape(image.shape[0], 1, *grid)
        for axis in (2, 3, 4):
            embedding_mask = embedding_mask.repeat_interleave(per_block, dim=axis)
        self._embedding_mask = embedding_mask.bool()
        try:
            deepest = self.swinViT(image, self.normalize)[-1]
        finally:
            self._embedding_mask = None
        return patchify(self.decoder(deepest), self.block), mask.to(image.dtype)
