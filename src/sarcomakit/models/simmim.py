"""SimMIM (Xie et al. 2022) around UNETR's vision transformer: masked tokens replaced by a learnt token, a linear
decoder predicting their voxels.

Unlike a masked autoencoder, the encoder sees every token, the masked ones as one learnt ``mask_token`` (plus
their position embeddings, so the network knows where the hole is), and the decoder is a single linear layer
from each encoded token to its ``C * 16³`` voxels: the representation, not the decoder, must do the work. The
transformer is UNETR's own ``vit`` module, so the pretrained ``vit.*`` tensors carry over to UNETR unchanged.
MONAI has the ViT and UNETR but no SimMIM wrapper, hence this module.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def patchify(image: torch.Tensor, token: int = 16) -> torch.Tensor:
    """``(B, C, Z, Y, X)`` into ``(B, N, C * token³)`` in the order of the ViT's tokens (z, then y, then x)."""
    b, c, z, y, x = image.shape
    grid = (z // token, y // token, x // token)
    blocks = image.reshape(b, c, grid[0], token, grid[1], token, grid[2], token)
    return blocks.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, math.prod(grid), c * token**3)


def random_token_mask(batch: int, n_tokens: int, ratio: float, device: torch.device) -> torch.Tensor:
    """``(B, N)`` bool with exactly ``round(ratio * N)`` tokens masked per sample (torch's global generator)."""
    order = torch.rand(batch, n_tokens, device=device).argsort(dim=1)
    return order < round(ratio * n_tokens)


class SimMIMViT(nn.Module):
    """SimMIM on a MONAI ViT with a convolutional patch embedding (UNETR's ``vit``).

    Args:
        vit: the transformer (``UNETR(...).vit``).
        in_channels: image channels (the decoder predicts each of them).
        token: token edge in voxels.
        mask_ratio: fraction of tokens masked in each sample when :meth:`forward` draws the mask itself.
    """

    vit: Any  # MONAI's ViT: patch_embedding (patch_embeddings, position_embeddings, dropout), blocks, norm

    def __init__(self, vit: Any, in_channels: int, token: int = 16, mask_ratio: float = 0.6) -> None:
        super().__init__()
        self.vit = vit
        hidden = int(self.vit.patch_embedding.position_embeddings.shape[-1])
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(hidden, in_channels * token**3)
        self.mask_ratio = float(mask_ratio)

    def random_mask(self, batch: int, n_tokens: int, device: torch.device) -> torch.Tensor:
        """``(B, N)`` bool with exactly ``round(ratio * N)`` tokens masked per sample (torch's global generator)."""
        return random_token_mask(batch, n_tokens, self.mask_ratio, device)

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted voxels of every token ``(B, N, C * token³)`` and the token mask used ``(B, N)``, 1 = masked."""
        embedding = self.vit.patch_embedding
        tokens = embedding.patch_embeddings(image).flatten(2).transpose(1, 2)
        if mask is None:
            mask = self.random_mask(tokens.shape[0], tokens.shape[1], tokens.device)
        tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = embedding.dropout(tokens + embedding.position_embeddings)
        for block in self.vit.blocks:
            tokens = block(tokens)
        return self.decoder(self.vit.norm(tokens)), mask.to(tokens.dtype)
