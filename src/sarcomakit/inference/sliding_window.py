"""Gaussian-weighted sliding-window prediction of a whole volume, with optional mirroring.

Wraps MONAI's ``sliding_window_inference`` (Gaussian importance map, as nnU-Net) and averages
the softmax over mirrored copies of the input when ``mirror_axes`` is given.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference


def mirror_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """All subsets of ``axes`` (the identity first): 8 for three axes."""
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.no_grad()
def predict_volume(model: torch.nn.Module, volume: torch.Tensor, patch_size: Sequence[int], *,
                   overlap: float = 0.5, sw_batch_size: int = 2, mirror_axes: Sequence[int] = (),
                   amp: bool = False) -> torch.Tensor:
    """Class probabilities (K, Z, Y, X) for one preprocessed volume (C, Z, Y, X).

    Args:
        model: network mapping (B, C, *patch) to (B, K, *patch) logits, in eval mode.
        volume: the preprocessed input on the model's device.
        patch_size: window size (z, y, x); volumes smaller than it are padded by MONAI.
        overlap: fraction of overlap between windows (0.5 as nnU-Net).
        mirror_axes: spatial axes (0=z, 1=y, 2=x) to mirror for test-time augmentation.
    """
    x = volume.unsqueeze(0)
    combos = mirror_combinations(mirror_axes) if mirror_axes else [()]

    def mirrored(combo: tuple[int, ...]) -> torch.Tensor:
        dims = [d + 2 for d in combo]
        inp = torch.flip(x, dims) if dims else x
        logits = sliding_window_inference(inp, roi_size=tuple(patch_size), sw_batch_size=sw_batch_size,
                                          predictor=model, overlap=overlap, mode="gaussian",
                                          padding_mode="constant")
        if not isinstance(logits, torch.Tensor):  # MONAI also passes on a tuple or dict from the model
            raise TypeError(f"the model must return one logits tensor, not {type(logits).__name__}")
        probs = torch.softmax(logits.float(), dim=1)
        return torch.flip(probs, dims) if dims else probs

    with torch.autocast(device_type=x.device.type, enabled=amp and x.device.type == "cuda"):
        total = mirrored(combos[0])
        for combo in combos[1:]:
            total = total + mirrored(combo)
    return (total / len(combos))[0]
