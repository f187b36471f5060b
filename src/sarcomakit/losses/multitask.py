"""The partial-label multi-task loss (segmentation, grade, survival).

:class:`MultiTaskLoss` gives each task only the cases labelled for it (grade -1 and survival time NaN
mean "unknown"); a task with no labelled case in a batch is skipped: its loss is exactly zero (never
NaN) and it is reported in ``skipped``. The tasks' losses live in :mod:`sarcomakit.losses.cox`,
:mod:`sarcomakit.losses.grade` and :mod:`sarcomakit.losses.segmentation`; their weighting in
:mod:`sarcomakit.losses.weighting`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import torch
from torch import Tensor, nn

from sarcomakit.losses.cox import CoxRiskMemory, cox_ph_loss, one_entry_per_case
from sarcomakit.losses.grade import grade_loss
from sarcomakit.losses.segmentation import dice_ce_loss
from sarcomakit.losses.weighting import FixedWeighting

TASKS: tuple[str, ...] = ("segmentation", "grade", "survival")


@dataclass
class MultiTaskLossOutput:
    """The weighted total, each task's unweighted loss, the tasks skipped and labelled-case counts."""

    total: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    n_labelled: dict[str, int] = field(default_factory=dict)


def survival_mask(time: Tensor, event: Tensor) -> Tensor:
    """Cases with a usable survival label: finite non-negative time and an event of 0 or 1."""
    time = torch.as_tensor(time).reshape(-1).float()
    event = torch.as_tensor(event).reshape(-1).float()
    return torch.isfinite(time) & (time >= 0) & ((event == 0) | (event == 1))


def masked_task_losses(outputs: Mapping[str, Tensor], targets: Mapping[str, Any],
                       segmentation_loss: Callable[[Tensor, Tensor], Tensor] | None = None,
                       grade_class_weights: Tensor | Sequence[float] | None = None, ordinal: bool = False,
                       cox_memory: CoxRiskMemory | None = None, update_memory: bool = True
                       ) -> tuple[dict[str, Tensor], list[str], dict[str, int]]:
    """Each task's loss over the cases labelled for it.

    Args:
        outputs: network outputs: ``"segmentation"`` logits (B, C, ...), ``"grade"`` logits (B, 3) or
            (B, 2) when ordinal, ``"log_risk"`` (B,) or (B, 1). Tasks without an output are not computed.
        targets: ``"segmentation"`` label maps (B, 1, ...) with optional ``"has_segmentation"`` (B,) bool;
            ``"grade"`` (B,) long, -1 unknown; ``"survival_time"`` (B,) float, NaN unknown, and
            ``"event"`` (B,) float 0/1, NaN unknown; optional ``"case_ids"`` (list): the patches of one case enter
            the Cox loss as one case (:func:`one_entry_per_case`) and are matched in the memory.
        segmentation_loss: loss of (logits, labels); default MONAI's Dice + cross-entropy.
        grade_class_weights, ordinal: see :func:`grade_loss`.
        cox_memory: compute the Cox loss against this memory (else over the batch alone).
        update_memory: push the batch's survival cases into the memory (False in validation).

    Returns:
        ``(losses, skipped, n_labelled)``: the loss of each computed task (exactly zero, attached to the
        graph, for a skipped task), the names of skipped tasks (no labelled case, or no death for
        survival) and how many cases each task used.
    """
    losses: dict[str, Tensor] = {}
    skipped: list[str] = []
    counts: dict[str, int] = {}

    if "segmentation" in outputs:
        logits = outputs["segmentation"]
        label = targets.get("segmentation")
        has = (torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device) if label is not None
               else torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device))
        if label is not None and "has_segmentation" in targets:
            has = torch.as_tensor(targets["has_segmentation"], device=logits.device).reshape(-1).bool()
        counts["segmentation"] = int(has.sum())
        if counts["segmentation"] == 0 or label is None:  # no label: none is counted
            losses["segmentation"] = logits.sum() * 0.0
            skipped.append("segmentation")
        else:
            loss_fn = segmentation_loss or dice_ce_loss()
            losses["segmentation"] = loss_fn(logits[has], label[has])

    if "grade" in outputs:
        logits = outputs["grade"]
        target = targets.get("grade")
        target = (torch.full((logits.shape[0],), -1, dtype=torch.long, device=logits.device) if target is None
                  else torch.as_tensor(target, device=logits.device).reshape(-1).long())
        counts["grade"] = int((target >= 0).sum())
        losses["grade"] = grade_loss(logits, target, grade_class_weights, ordinal)
        if counts["grade"] == 0:
            skipped.append("grade")

    if "log_risk" in outputs:
        log_risk = outputs["log_risk"].reshape(-1)
        nan = torch.full_like(log_risk.detach(), float("nan"))
        time = torch.as_tensor(targets.get("survival_time", nan), device=log_risk.device).reshape(-1)
        event = torch.as_tensor(targets.get("event", nan), device=log_risk.device).reshape(-1)
        valid = survival_mask(time, event).to(log_risk.device)
        counts["survival"] = int(valid.sum())
        ids = targets.get("case_ids")
        valid_ids: list[str] | None = (None if ids is None
                                       else [ids[i] for i in torch.nonzero(valid).reshape(-1).tolist()])
        dtype = torch.promote_types(log_risk.dtype, torch.float32)
        time, event = time[valid].to(dtype), event[valid].to(dtype)
        if cox_memory is not None:
            out = cox_memory.loss(log_risk[valid], time, event, valid_ids, update=update_memory)
            loss, has_events = out.loss, out.has_events
        else:
            risk = log_risk[valid]
            if valid_ids is not None:
                risk, time, event, _ = one_entry_per_case(risk, time, event, valid_ids)
            has_events = bool(event.sum() > 0)
            loss = cox_ph_loss(risk, time, event) if has_events else log_risk.sum() * 0.0
        if counts["survival"] == 0 or not has_events:
            loss = log_risk.sum() * 0.0
            skipped.append("survival")
        losses["survival"] = loss

    return losses, skipped, counts


class MultiTaskLoss(nn.Module):
    """Partial-label multi-task loss: :func:`masked_task_losses` combined by a weighting.

    Args:
        weighting: :class:`FixedWeighting` or :class:`UncertaintyWeighting` over the task names
            ``segmentation``, ``grade``, ``survival`` (default: fixed weight 1 each).
        segmentation_loss: default MONAI ``DiceCELoss`` (softmax, one-hot labels, background excluded).
        grade_class_weights, ordinal: see :func:`grade_loss`.
        cox_memory: a :class:`CoxRiskMemory`; updated in training mode only.

    ``forward(outputs, targets)`` returns a :class:`MultiTaskLossOutput`; skipped tasks are left out of
    the weighting, and the total is zero (attached to the graph) when every task is skipped.
    """

    def __init__(self, weighting: nn.Module | None = None, segmentation_loss: Callable[[Tensor, Tensor], Tensor] | None
                 = None, grade_class_weights: Tensor | Sequence[float] | None = None, ordinal: bool = False,
                 cox_memory: CoxRiskMemory | None = None) -> None:
        super().__init__()
        self.weighting = weighting or FixedWeighting(dict.fromkeys(TASKS, 1.0))
        self.segmentation_loss = segmentation_loss or dice_ce_loss()
        self.grade_class_weights = grade_class_weights
        self.ordinal = ordinal
        self.cox_memory = cox_memory

    def forward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Any]) -> MultiTaskLossOutput:
        losses, skipped, counts = masked_task_losses(
            outputs, targets, self.segmentation_loss, self.grade_class_weights, self.ordinal, self.cox_memory,
            update_memory=self.training)
        active = {name: loss for name, loss in losses.items() if name not in skipped}
        anchor = reduce(operator.add, losses.values()) * 0.0 if losses else torch.zeros(())
        total: Tensor = self.weighting(active) + anchor if active else anchor
        if not bool(torch.isfinite(total)):
            raise FloatingPointError(f"non-finite multi-task loss; task losses: "
                                     f"{ {k: float(v.detach()) for k, v in losses.items()} }")
        return MultiTaskLossOutput(total, losses, skipped, counts)

