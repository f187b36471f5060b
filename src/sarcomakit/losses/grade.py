"""Histological grade: class-weighted cross-entropy or an ordinal cumulative-logit loss (low < intermediate < high),
the probabilities of either head, and balanced class weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

N_GRADES = 3

def grade_loss(logits: Tensor, target: Tensor, class_weights: Tensor | Sequence[float] | None = None,
               ordinal: bool = False) -> Tensor:
    """Grade loss over the cases with a known grade (target -1 = unknown, ignored).

    - Nominal (``ordinal=False``): cross-entropy of ``logits`` (B, 3), each case weighted by its class
      weight and the sum divided by the sum of weights (as ``F.cross_entropy(weight=...)``).
    - Ordinal (``ordinal=True``): ``logits`` (B, 2) are cumulative logits ``logit P(grade > k)`` for
      k = low, intermediate (CORAL, Cao et al. 2020, when the head shares one weight vector and has
      two biases); the loss is the binary cross-entropy summed over both thresholds, weighted per case
      by its class weight and divided by the sum of weights.

    Args:
        logits: (B, 3) class logits or (B, 2) cumulative logits.
        target: grade indices (B,), -1 for unknown.
        class_weights: one weight per class (e.g. :func:`balanced_class_weights`), default all one.
        ordinal: use the cumulative-logit loss.

    Returns:
        A scalar; zero attached to the graph when no case has a grade.
    """
    target = torch.as_tensor(target, device=logits.device).reshape(-1).long()
    expected = N_GRADES - 1 if ordinal else N_GRADES
    if logits.ndim != 2 or logits.shape[1] != expected or logits.shape[0] != target.numel():
        raise ValueError(f"grade logits must have shape (B, {expected}) for B = {target.numel()}, got "
                         f"{tuple(logits.shape)}")
    known = target >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    weights = (torch.ones(N_GRADES, dtype=logits.dtype, device=logits.device) if class_weights is None
               else torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device))
    logits, target = logits[known], target[known]
    case_weight = weights[target]
    if ordinal:
        thresholds = torch.arange(N_GRADES - 1, device=logits.device)
        above = (target[:, None] > thresholds[None, :]).to(logits.dtype)
        per_case = F.binary_cross_entropy_with_logits(logits, above, reduction="none").sum(dim=1)
    else:
        per_case = F.cross_entropy(logits, target, reduction="none")
    total_weight = case_weight.sum()
    if total_weight <= 0:
        return logits.sum() * 0.0
    return (case_weight * per_case).sum() / total_weight


def grade_probabilities(logits: Tensor, ordinal: bool = False) -> Tensor:
    """Class probabilities (B, 3) from grade logits.

    Nominal: softmax. Ordinal: with ``s_k = sigmoid(logit_k) = P(grade > k)``, ``p(low) = 1 - s_0``,
    ``p(intermediate) = s_0 - s_1``, ``p(high) = s_1``, where ``s_1`` is capped at ``s_0`` so that the
    probabilities stay non-negative when an unconstrained head predicts crossing thresholds.
    """
    if not ordinal:
        return logits.softmax(dim=1)
    above = logits.sigmoid()
    above_low = above[:, 0]
    above_intermediate = torch.minimum(above[:, 1], above_low)
    return torch.stack([1 - above_low, above_low - above_intermediate, above_intermediate], dim=1)


def balanced_class_weights(target: Tensor | Sequence[int], n_classes: int = N_GRADES) -> Tensor:
    """``n / (K * n_k)`` per class over the known targets (scikit-learn's "balanced"); 0 for an absent class."""
    target = torch.as_tensor(target).reshape(-1).long()
    target = target[target >= 0]
    counts = torch.bincount(target, minlength=n_classes).to(torch.float32)
    weights = torch.zeros(n_classes)
    present = counts > 0
    weights[present] = target.numel() / (int(present.sum()) * counts[present])
    return weights
