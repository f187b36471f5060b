"""The segmentation loss: nnU-Net's soft Dice over the batch plus cross-entropy (MONAI's DiceCELoss)."""

from __future__ import annotations

from monai.losses import DiceCELoss


def dice_ce_loss() -> DiceCELoss:
    """Soft Dice over the batch (foreground classes only) plus cross-entropy, on logits and integer labels."""
    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                      smooth_nr=1e-5, smooth_dr=1e-5)
