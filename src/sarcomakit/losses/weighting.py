"""Weighting of several task losses: fixed weights, or Kendall et al.'s learnt uncertainty weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


class FixedWeighting(nn.Module):
    """``L = sum_t w_t L_t`` over the tasks present (a skipped task contributes nothing)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        super().__init__()
        if any(w < 0 for w in weights.values()):
            raise ValueError("task weights must be non-negative")
        self.weights = dict(weights)

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        unknown = set(losses) - set(self.weights)
        if unknown:
            raise KeyError(f"no weight for task(s) {sorted(unknown)}")
        return _sum_of(self.weights[name] * loss for name, loss in losses.items())


class UncertaintyWeighting(nn.Module):
    r"""Homoscedastic uncertainty weighting of Kendall, Gal & Cipolla (CVPR 2018).

    Each task has a learnable :math:`s_t = \log \sigma_t^2` (initialised at 0, i.e. weight 1):

    - ``"classification"`` form (softmax likelihood with temperature :math:`\sigma^2`; used for
      segmentation, grade and the Cox partial likelihood, itself a softmax over the risk set):
      :math:`e^{-s_t} L_t + s_t / 2`;
    - ``"regression"`` form (Gaussian likelihood): :math:`\tfrac12 e^{-s_t} L_t + s_t / 2`.

    The :math:`s_t / 2` term (:math:`\log \sigma_t`) keeps the weights from collapsing to zero. A
    task skipped in a batch (no labelled case) adds neither its loss nor its regulariser, so its
    :math:`s_t` is not pushed around by batches that say nothing about it. Put the module's parameters
    in the optimiser with the network's.

    Args:
        task_names: the tasks.
        forms: ``{task: "classification" | "regression"}``, default classification for all.
    """

    def __init__(self, task_names: Sequence[str], forms: Mapping[str, str] | None = None) -> None:
        super().__init__()
        forms = dict(forms or {})
        unknown = set(forms) - set(task_names)
        if unknown:
            raise KeyError(f"forms given for unknown task(s) {sorted(unknown)}")
        self.task_names = list(task_names)
        self.forms = {name: forms.get(name, "classification") for name in self.task_names}
        if any(f not in ("classification", "regression") for f in self.forms.values()):
            raise ValueError("forms must be 'classification' or 'regression'")
        self.log_variances = nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in self.task_names})

    def forward(self, losses: Mapping[str, Tensor]) -> Tensor:
        terms = []
        for name, loss in losses.items():
            if name not in self.log_variances:
                raise KeyError(f"unknown task {name!r}; known: {self.task_names}")
            s = self.log_variances[name]
            scale = 1.0 if self.forms[name] == "classification" else 0.5
            terms.append(scale * torch.exp(-s) * loss + 0.5 * s)
        return _sum_of(terms)

    def weights(self) -> dict[str, float]:
        """The current effective weight of each task's loss."""
        return {name: float((1.0 if self.forms[name] == "classification" else 0.5) * torch.exp(-s.detach()))
                for name, s in self.log_variances.items()}


def _sum_of(terms: object) -> Tensor:
    total: Tensor | None = None
    for term in terms:  # type: ignore[attr-defined]
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())
