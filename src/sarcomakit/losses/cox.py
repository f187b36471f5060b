"""The Cox proportional-hazards loss: the negative partial log-likelihood with Efron's ties, and a risk memory.

A 3D batch of one or two cases gives a degenerate (zero) partial likelihood, so training computes it
against a :class:`CoxRiskMemory` of recent cases. Used by the multi-task model and by the radiomics
baseline's penalised Cox regression.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


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
        ids: list[str | None] = list(case_ids) if case_ids is not None else [None] * log_risk.numel()
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

    def state_dict(self) -> dict[str, Any]:
        """The memory's content, to save in a checkpoint so that a resumed run continues with it."""
        return {"size": self.size, "entries": list(self._entries)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the content saved by :meth:`state_dict`."""
        self._entries = deque((tuple(e) for e in state["entries"]), maxlen=self.size)
