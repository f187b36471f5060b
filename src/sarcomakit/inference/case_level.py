"""Case-level answers of a multi-task network: grade probabilities and log-risk for a whole case.

The heads see one patch: the one centred on the predicted tumour (its centre of mass; the
volume centre when nothing is predicted), so that the pooled features describe the tumour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sarcomakit.inference.sliding_window import predict_volume
from sarcomakit.losses.grade import grade_probabilities


class SegmentationOutput(nn.Module):
    """Expose only the segmentation logits of a multi-task network (for sliding-window inference)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)["segmentation"]


@dataclass
class CaseOutputs:
    """Segmentation probabilities (K, Z, Y, X) on the preprocessed grid, grade probabilities (3,), log-risk."""

    probabilities: torch.Tensor
    grade_probabilities: np.ndarray
    log_risk: float


def tumour_centred_patch(volume: torch.Tensor, tumour: np.ndarray, patch_size: Sequence[int]) -> torch.Tensor:
    """The (C, *patch) crop of ``volume`` centred on the tumour's centre of mass; near a border the crop is shifted to
    stay inside the volume (as training patches are), and zero-padded only along an axis shorter than the patch."""
    shape = np.array(volume.shape[1:])
    patch = np.array(patch_size)
    centre = np.array(np.nonzero(tumour)).mean(axis=1).round().astype(int) if tumour.any() else shape // 2
    start = np.clip(centre - patch // 2, np.minimum(shape - patch, 0), np.maximum(shape - patch, 0))
    out = volume.new_zeros((volume.shape[0], *patch))
    lo, hi = np.maximum(start, 0), np.minimum(start + patch, shape)
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    out[(slice(None), *dst)] = volume[(slice(None), *src)]
    return out


@torch.no_grad()
def predict_case_outputs(network: nn.Module, volume: torch.Tensor, patch_size: Sequence[int], *,
                         available: torch.Tensor | None = None, overlap: float = 0.5, sw_batch_size: int = 2,
                         mirror_axes: Sequence[int] = (), amp: bool = False) -> CaseOutputs:
    """Segment the whole volume by sliding window, then run the heads on the tumour-centred patch."""
    network.eval()
    probabilities = predict_volume(SegmentationOutput(network), volume, patch_size, overlap=overlap,
                                   sw_batch_size=sw_batch_size, mirror_axes=mirror_axes, amp=amp)
    tumour = (probabilities.argmax(0) > 0).cpu().numpy()
    patch = tumour_centred_patch(volume, tumour, patch_size)[None]
    flags = None if available is None else available.reshape(1, -1).to(volume.device)
    outputs = network(patch, flags)
    grades = grade_probabilities(outputs["grade"].float(), ordinal=getattr(network, "ordinal", False))
    return CaseOutputs(probabilities=probabilities, grade_probabilities=grades[0].cpu().numpy(),
                       log_risk=float(outputs["log_risk"][0]))
