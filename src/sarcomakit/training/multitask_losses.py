"""Losses of the multi-task model (segmentation, grade, survival), partial labels and task weighting.

- Survival: the Cox negative partial log-likelihood with Efron's handling of tied times
  (:func:`cox_ph_loss`), computed over a :class:`CoxRiskMemory` of recent cases because a 3D batch of
  one or two cases gives a degenerate (zero) partial likelihood.
- Grade: class-weighted cross-entropy, or an ordinal cumulative-logit loss for low < intermediate <
  high (:func:`grade_loss`, :func:`grade_probabilities`).
- Weighting: :class:`FixedWeighting` and Kendall et al.'s learned uncertainty weights
  (:class:`UncertaintyWeighting`).
- Partial labels: :class:`MultiTaskLoss` gives each task only the cases labelled for it (grade -1 and
  survival time NaN mean "unknown"); a task with no labelled case in a batch is skipped: its loss is
  exactly zero (never NaN) and it is reported in ``skipped``.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TASKS: tuple[str, ...] = ("segmentation", "grade", "survival")
N_GRADES = 3


# ---------------------------------------------------------------------- Cox partial likelihood
def cox_neg_partial_log_likelihood(log_risk: Tensor, time: Tensor, event: Tensor, ties: str = "efron",
                                   reduction: str = "mean") -> Tensor:
    r"""Negative Cox partial log-likelihood with Efron's (or Breslow's) handling of tied death times.

    Over the distinct death times :math:`t_k` with :math:`m_k` deaths :math:`H_k`, risk set
    :math:`R_k = \{j: t_j \ge t_k\}`, :math:`S_k = \sum_{R_k} e^{\eta_j}` and :math:`D_k = \sum_{H_k} e^{\eta_j}`:

    .. math::
        -\ell = -\sum_k \Big[ \sum_{i \in H_k} \eta_i
                - \sum_{r=0}^{m_k-1} \log\big(S_k - \tfrac{r}{m_k} D_k\big) \Big]

    Breslow's approximation drops the :math:`\tfrac{r}{m_k} D_k` correction (every tied death sees the
    full risk set).

    Written in torch, in log space, rather than calling torchsurv (0.2), whose Efron path sums
    ``exp(log_risk)`` in float32 whatever the input dtype and returns ``-inf`` once log-risks spread
    over a few hundred units; here every sum is a log-sum-exp, finite for any finite input.

    Args:
        log_risk: log relative hazards :math:`\eta`, shape (N,).
        time: follow-up times, shape (N,).
        event: 1 for a death, 0 for censoring, shape (N,).
        ties: ``"efron"`` or ``"breslow"``.
        reduction: ``"sum"`` or ``"mean"`` (divided by the number of deaths).

    Returns:
        A scalar; zero (attached to the graph) when there is no death.
    """
    _check_cox_options(ties, reduction)
    log_risk, time, died = _cox_inputs(log_risk, time, event)
    n_deaths = died.sum()
    if n_deaths == 0:
        return log_risk.sum() * 0.0
    order = torch.argsort(time)
    eta, time, died = log_risk[order], time[order], died[order]
    distinct, group, size = torch.unique_consecutive(time, return_inverse=True, return_counts=True)
    first = torch.cumsum(size, 0) - size
    # log S_k: log-sum-exp over the risk set, which in time order is a suffix of the cases
    log_risk_set = torch.flip(torch.logcumsumexp(torch.flip(eta, [0]), 0), [0])[first]
    # D_k / S_k as a sum of exp(eta_i - log S_k) <= 1 so that nothing overflows or underflows to log(0)
    share = torch.zeros_like(log_risk_set).index_add(0, group[died], (eta[died] - log_risk_set[group[died]]).exp())
    deaths = torch.zeros(distinct.numel(), dtype=torch.long, device=eta.device).index_add(
        0, group[died], torch.ones_like(group[died]))
    steps = torch.arange(int(deaths.max()), device=eta.device, dtype=eta.dtype)
    fraction = steps[None, :] / deaths.clamp(min=1)[:, None].to(eta.dtype) * (ties == "efron")
    used = steps[None, :] < deaths[:, None]
    # log(S_k - (r/m_k) D_k) = log S_k + log(1 - (r/m_k) D_k/S_k), and (r/m_k) D_k/S_k <= (m_k-1)/m_k < 1
    log_terms = log_risk_set[:, None] + torch.log1p(-(fraction * share[:, None]).clamp(max=1 - 1e-7))
    nll = -(eta[died].sum() - torch.where(used, log_terms, torch.zeros_like(log_terms)).sum())
    return nll / n_deaths.to(eta.dtype) if reduction == "mean" else nll


def cox_ph_loss(log_risk: Tensor, time: Tensor, event: Tensor, ties: str = "efron", reduction: str = "mean",
                backend: str = "torch") -> Tensor:
    """Negative Cox partial log-likelihood (higher log-risk = earlier death).

    Args:
        log_risk: predicted log-risks, shape (N,) or (N, 1).
        time: follow-up times (N,); event: 1 died / 0 censored (N,).
        ties: ``"efron"`` or ``"breslow"``.
        reduction: ``"mean"`` (per death) or ``"sum"``.
        backend: ``"torch"`` (:func:`cox_neg_partial_log_likelihood`, log-space, any dtype) or
            ``"torchsurv"`` (``torchsurv.loss.cox.neg_partial_log_likelihood`` on log-risks shifted by
            their maximum; float32 precision). Both agree to float32 precision on moderate inputs.

    Returns:
        A scalar; zero attached to the graph (so ``backward`` works) when no case died.
    """
    _check_cox_options(ties, reduction)
    if backend == "torch":
        return cox_neg_partial_log_likelihood(log_risk, time, event, ties, reduction)
    if backend != "torchsurv":
        raise ValueError(f"backend must be 'torch' or 'torchsurv', got {backend!r}")
    neg_partial_log_likelihood = _torchsurv_loss()
    if neg_partial_log_likelihood is None:
        raise ImportError("torchsurv is not installed. Fix: pip install torchsurv, or use backend='torch'.")
    log_risk, time, died = _cox_inputs(log_risk, time, event)
    n_deaths = died.sum()
    if n_deaths == 0:
        return log_risk.sum() * 0.0
    with warnings.catch_warnings():  # torchsurv warns on every batch with tied times
        warnings.simplefilter("ignore", UserWarning)
        nll = neg_partial_log_likelihood(log_risk - log_risk.detach().max(), died, time, ties_method=ties,
                                         reduction="sum")
    # torchsurv's "mean" averages over distinct death times when times tie; per death is comparable across batches
    return nll / n_deaths.to(nll.dtype) if reduction == "mean" else nll


def _check_cox_options(ties: str, reduction: str) -> None:
    if ties not in ("efron", "breslow"):
        raise ValueError(f"ties must be 'efron' or 'breslow', got {ties!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _torchsurv_loss() -> Callable[..., Tensor] | None:
    try:
        from torchsurv.loss.cox import neg_partial_log_likelihood
    except ImportError:
        return None
    return neg_partial_log_likelihood


def _cox_inputs(log_risk: Tensor, time: Tensor, event: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    # at least float32: half precision would merge follow-up times (float16 steps by 2 days near 3000)
    log_risk = log_risk.reshape(-1).to(torch.promote_types(log_risk.dtype, torch.float32))
    time = torch.as_tensor(time, device=log_risk.device).reshape(-1).to(log_risk.dtype)
    died = torch.as_tensor(event, device=log_risk.device).reshape(-1).bool()
    if not log_risk.numel() == time.numel() == died.numel():
        raise ValueError(f"log_risk, time and event differ in length ({log_risk.numel()}, {time.numel()}, "
                         f"{died.numel()})")
    if not bool(torch.isfinite(time).all()) or bool((time < 0).any()):
        raise ValueError("survival times must be finite and non-negative (mask unknown times before the loss)")
    return log_risk, time, died


def one_entry_per_case(log_risk: Tensor, time: Tensor, event: Tensor, case_ids: Sequence[str | None]
                       ) -> tuple[Tensor, Tensor, Tensor, list[str | None]]:
    """Merge the patches of one case into one survival entry: the mean of their log-risks, the case's time and event.

    A batch may hold several patches of a case; the Cox partial likelihood is over patients, so each
    case must appear once (otherwise a death counts as several tied deaths). The mean keeps a gradient
    to every patch. Entries without an id are kept as they are. Order follows first appearance.

    Args:
        log_risk, time, event: one value per patch, shape (B,).
        case_ids: the case id of each patch (None: an anonymous case of its own).

    Returns:
        ``(log_risk, time, event, ids)`` with one entry per case.

    Raises:
        ValueError: patches of one case carry different times or events.
    """
    ids = list(case_ids)
    keys: list[object] = [case_id if case_id is not None else (None, k) for k, case_id in enumerate(ids)]
    position: dict[object, int] = {}
    first_index: list[int] = []
    for k, key in enumerate(keys):
        if key not in position:
            position[key] = len(position)
            first_index.append(k)
    if len(position) == len(keys):
        return log_risk, time, event, ids
    group = torch.tensor([position[key] for key in keys], device=log_risk.device)
    first = torch.tensor(first_index, device=log_risk.device)
    for values in (time, event):
        if not torch.allclose(values, values[first][group], rtol=0.0, atol=0.0, equal_nan=True):
            raise ValueError("patches of one case carry different survival times or events")
    counts = torch.bincount(group, minlength=len(position)).to(log_risk.dtype)
    mean_risk = torch.zeros(len(position), dtype=log_risk.dtype, device=log_risk.device).index_add(
        0, group, log_risk) / counts
    return mean_risk, time[first], event[first], [ids[k] for k in first_index]


@dataclass
class CoxMemoryLoss:
    """The Cox loss of a batch against the memory, and what it was computed on."""

    loss: Tensor
    has_events: bool
    n_cases: int
    n_events: int


class CoxRiskMemory:
    """A queue of recent cases' detached log-risks, times and events to compute a batch's Cox loss against.

    The partial likelihood compares each death with everyone still at risk; with 3D batches of one or
    two cases that comparison is empty (one case: the loss is exactly zero). The memory keeps the last
    ``size`` cases seen in training; the loss of a batch is the partial likelihood of *batch + memory*,
    with gradients through the batch's log-risks only (memory risks are constants from earlier steps,
    the idea of a momentum queue as in MoCo-style contrastive learning). After the loss, the batch enters
    the queue and the oldest cases leave. A case id already in the memory is replaced, not duplicated.

    A case is one subject of the partial likelihood however many of its patches a batch holds: patches
    that share a case id are merged into one entry whose log-risk is the mean of theirs (see
    :func:`one_entry_per_case`). Counted apart, two patches of a case that died would be two tied deaths
    and the case would weigh twice in its own risk set.

    Args:
        size: the number of cases kept (e.g. the size of a training fold, or a few dozen).
        ties, backend: passed to :func:`cox_ph_loss`.

    Example:
        >>> memory = CoxRiskMemory(size=32)
        >>> out = memory.loss(model_log_risk, time, event)  # doctest: +SKIP
        >>> out.loss.backward()  # doctest: +SKIP
    """

    def __init__(self, size: int = 64, ties: str = "efron", backend: str = "torch") -> None:
        if size < 1:
            raise ValueError(f"memory size must be at least 1, got {size}")
        self.size = size
        self.ties = ties
        self.backend = backend
        self._entries: deque[tuple[str | None, float, float, float]] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self) -> None:
        """Forget every case (e.g. at the start of a fold)."""
        self._entries.clear()

    def loss(self, log_risk: Tensor, time: Tensor, event: Tensor, case_ids: Sequence[str] | None = None,
             update: bool = True) -> CoxMemoryLoss:
        """Cox loss (mean per death) of the batch computed together with the memory.

        Args:
            log_risk: the batch's log-risks with gradients, shape (B,) or (B, 1).
            time, event: the batch's times and events (only cases with a known survival).
            case_ids: optional ids; patches sharing an id count as one case, and memory entries of the
                same cases are left out and replaced.
            update: push the batch into the memory afterwards (False for validation).

        Returns:
            :class:`CoxMemoryLoss`; ``loss`` is zero attached to the graph and ``has_events`` False when
            no death is present in batch + memory, or the batch is empty.
        """
        log_risk = log_risk.reshape(-1).to(torch.promote_types(log_risk.dtype, torch.float32))
        time = torch.as_tensor(time, device=log_risk.device, dtype=log_risk.dtype).reshape(-1)
        event = torch.as_tensor(event, device=log_risk.device, dtype=log_risk.dtype).reshape(-1)
        ids = list(case_ids) if case_ids is not None else [None] * log_risk.numel()
        if len(ids) != log_risk.numel():
            raise ValueError("give one case id per case of the batch")
        log_risk, time, event, ids = one_entry_per_case(log_risk, time, event, ids)
        current = set(i for i in ids if i is not None)
        stored = [entry for entry in self._entries if entry[0] is None or entry[0] not in current]
        memory = torch.tensor([entry[1:] for entry in stored], dtype=log_risk.dtype,
                              device=log_risk.device).reshape(-1, 3)
        all_risk = torch.cat([log_risk, memory[:, 0]])
        all_time = torch.cat([time, memory[:, 1]])
        all_event = torch.cat([event, memory[:, 2]])
        n_events = int(all_event.sum().item())
        if log_risk.numel() == 0 or n_events == 0:
            result = CoxMemoryLoss(log_risk.sum() * 0.0, False, int(all_risk.numel()), n_events)
        else:
            value = cox_ph_loss(all_risk, all_time, all_event, ties=self.ties, backend=self.backend)
            result = CoxMemoryLoss(value, True, int(all_risk.numel()), n_events)
        if update:
            self.push(log_risk, time, event, ids)
        return result

    def push(self, log_risk: Tensor, time: Tensor, event: Tensor, case_ids: Sequence[str | None] | None = None) -> None:
        """Add cases (detached) to the memory, replacing entries with the same id (patches of a case merged)."""
        risk_values = log_risk.detach().reshape(-1).cpu()
        ids = list(case_ids) if case_ids is not None else [None] * risk_values.numel()
        merged = one_entry_per_case(risk_values, torch.as_tensor(time).reshape(-1).cpu(),
                                    torch.as_tensor(event).reshape(-1).cpu(), ids)
        risks, times, events = (values.tolist() for values in merged[:3])
        ids = merged[3]
        new_ids = {i for i in ids if i is not None}
        if new_ids:
            kept = [entry for entry in self._entries if entry[0] not in new_ids]
            self._entries.clear()
            self._entries.extend(kept)
        for case_id, r, t, e in zip(ids, risks, times, events, strict=True):
            self._entries.append((case_id, float(r), float(t), float(e)))

    def state_dict(self) -> dict[str, object]:
        """The memory's content, to save in a checkpoint so that a resumed run continues with it."""
        return {"size": self.size, "entries": list(self._entries)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore the content saved by :meth:`state_dict`."""
        self._entries = deque((tuple(e) for e in state["entries"]), maxlen=self.size)  # type: ignore[union-attr]


# ---------------------------------------------------------------------- grade
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


# ---------------------------------------------------------------------- weighting
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


# ---------------------------------------------------------------------- partial labels
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


def masked_task_losses(outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor],
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
        if counts["segmentation"] == 0:
            losses["segmentation"] = logits.sum() * 0.0
            skipped.append("segmentation")
        else:
            loss_fn = segmentation_loss or _default_segmentation_loss()
            losses["segmentation"] = loss_fn(logits[has], label[has])  # type: ignore[index]

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
        valid_ids = [ids[i] for i in torch.nonzero(valid).reshape(-1).tolist()] if ids is not None else None
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
        self.segmentation_loss = segmentation_loss or _default_segmentation_loss()
        self.grade_class_weights = grade_class_weights
        self.ordinal = ordinal
        self.cox_memory = cox_memory

    def forward(self, outputs: Mapping[str, Tensor], targets: Mapping[str, Tensor]) -> MultiTaskLossOutput:
        losses, skipped, counts = masked_task_losses(
            outputs, targets, self.segmentation_loss, self.grade_class_weights, self.ordinal, self.cox_memory,
            update_memory=self.training)
        active = {name: loss for name, loss in losses.items() if name not in skipped}
        anchor = sum(loss for loss in losses.values()) * 0.0 if losses else torch.zeros(())
        total = self.weighting(active) + anchor if active else anchor
        if not bool(torch.isfinite(total)):
            raise FloatingPointError(f"non-finite multi-task loss; task losses: "
                                     f"{ {k: float(v.detach()) for k, v in losses.items()} }")
        return MultiTaskLossOutput(total, losses, skipped, counts)


def _default_segmentation_loss() -> Callable[[Tensor, Tensor], Tensor]:
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                      smooth_nr=1e-5, smooth_dr=1e-5)
