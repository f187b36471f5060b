"""Server-side aggregation of the sites' weights into the next global weights.

Every aggregator maps the current global weights and the sites' updates (weights, number of training cases)
to new global weights. Only floating-point tensors are aggregated; integer buffers (counters) are taken from
the global weights unchanged.

- **FedAvg** (McMahan et al. 2017): ``w = sum_i n_i w_i / sum_i n_i``.
- **FedProx** (Li et al. 2020) aggregates like FedAvg; it differs on the site, which adds the proximal term
  ``(mu/2) * ||w - w_global||^2`` to its loss (:class:`sarcomakit.federated.site.ProximalObjective`).
- **FedAdam / FedYogi** (Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2): the pseudo-gradient
  ``d = FedAvg(w_i) - w_global`` drives a server optimiser without bias correction:
  ``m = b1 m + (1 - b1) d``; Adam: ``v = b2 v + (1 - b2) d^2``; Yogi: ``v = v - (1 - b2) d^2 sign(v - d^2)``;
  ``w = w_global + eta m / (sqrt(v) + tau)``, with ``m`` starting at 0 and ``v`` at ``tau^2`` (the paper's
  ``v_{-1} >= tau^2``). The moments are server state, saved in every round's checkpoint so a resumed run goes on.
- **FedMedian** (Yin et al. 2018): the coordinate-wise median of the sites' weights (unweighted; the mean of the
  two middle values for an even number of sites, as ``numpy.median``), robust to one site's outlying update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sarcomakit.core.errors import UserInputError

Weights = dict[str, torch.Tensor]

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedmedian")


@dataclass
class SiteUpdate:
    """What a site sends back after local training: its weights, its number of training cases, its metrics."""

    site: str
    weights: Weights
    n_cases: int
    metrics: dict[str, float]


def _floating(tensor: torch.Tensor) -> bool:
    return torch.is_floating_point(tensor)


def weighted_mean(updates: Sequence[tuple[Mapping[str, torch.Tensor], int]],
                  reference: Mapping[str, torch.Tensor]) -> Weights:
    """``sum_i n_i w_i / sum_i n_i`` for every floating tensor; other tensors are copied from ``reference``."""
    total = sum(n for _, n in updates)
    if not updates or total <= 0:
        raise ValueError("no site updates with training cases to aggregate")
    result: Weights = {}
    for key, value in reference.items():
        if _floating(value):
            acc = torch.zeros_like(value, dtype=torch.float64)
            for weights, n in updates:
                acc += weights[key].to(torch.float64) * n
            result[key] = (acc / total).to(value.dtype)
        else:
            result[key] = value.clone()
    return result


class Aggregator:
    """Base class: :meth:`aggregate` returns the next global weights; ``state_dict`` holds server state."""

    name = "base"

    def aggregate(self, global_weights: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate]) -> Weights:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (nothing for stateless aggregators)."""


class FedAvg(Aggregator):
    """The case-weighted mean of the sites' weights (module docstring)."""

    name = "fedavg"

    def aggregate(self, global_weights: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate]) -> Weights:
        return weighted_mean([(u.weights, u.n_cases) for u in updates], global_weights)


class FedProx(FedAvg):
    """FedAvg aggregation; the proximal term is the sites' business (module docstring)."""

    name = "fedprox"


class FedMedian(Aggregator):
    """The coordinate-wise median of the sites' weights (module docstring)."""

    name = "fedmedian"

    def aggregate(self, global_weights: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate]) -> Weights:
        if not updates:
            raise ValueError("no site updates to aggregate")
        result: Weights = {}
        for key, value in global_weights.items():
            if not _floating(value):
                result[key] = value.clone()
                continue
            stacked, _ = torch.sort(torch.stack([u.weights[key].to(torch.float64) for u in updates]), dim=0)
            k = len(updates)
            median = stacked[k // 2] if k % 2 else (stacked[k // 2 - 1] + stacked[k // 2]) / 2
            result[key] = median.to(value.dtype)
        return result


class FedOpt(Aggregator):
    """Adaptive server optimiser on the FedAvg pseudo-gradient (FedAdam, FedYogi; module docstring).

    Args:
        server_lr: ``eta``.
        beta1, beta2: moment decay rates.
        tau: adaptivity (the denominator's floor; ``v`` starts at ``tau^2``).
    """

    name = "fedopt"
    rule = "adam"

    def __init__(self, server_lr: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        self.server_lr = server_lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self.m: Weights = {}
        self.v: Weights = {}

    def aggregate(self, global_weights: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate]) -> Weights:
        mean = weighted_mean([(u.weights, u.n_cases) for u in updates], global_weights)
        result: Weights = {}
        for key, value in global_weights.items():
            if not _floating(value):
                result[key] = mean[key]
                continue
            w = value.to(torch.float64)
            delta = mean[key].to(torch.float64) - w
            m = self.m.get(key, torch.zeros_like(w))
            v = self.v.get(key, torch.full_like(w, self.tau ** 2))
            m = self.beta1 * m + (1 - self.beta1) * delta
            squared = delta * delta
            if self.rule == "yogi":
                v = v - (1 - self.beta2) * squared * torch.sign(v - squared)
            else:
                v = self.beta2 * v + (1 - self.beta2) * squared
            self.m[key], self.v[key] = m, v
            result[key] = (w + self.server_lr * m / (torch.sqrt(v) + self.tau)).to(value.dtype)
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = dict(state.get("m", {}))
        self.v = dict(state.get("v", {}))


class FedAdam(FedOpt):
    """FedOpt with Adam's second moment."""

    name = "fedadam"
    rule = "adam"


class FedYogi(FedOpt):
    """FedOpt with Yogi's additive second moment (more stable when the pseudo-gradients' scale changes)."""

    name = "fedyogi"
    rule = "yogi"


class CentralDP(Aggregator):
    """Client-level (central) DP around FedAvg/FedProx, as Flower's server-side fixed clipping does it.

    Each site's update ``Δ_i = w_i - w`` (every floating tensor together) is clipped to L2 norm ``C``
    (``Δ_i · min(1, C / ‖Δ_i‖)``), the clipped updates are averaged *uniformly* (a case-weighted mean would let a
    large site move it by more than ``C / n``), and Gaussian noise of standard deviation ``σ C / n`` is added to
    every weight of the mean, ``n`` being the number of sites aggregated. One round is then (ε, δ)-DP for one
    site's whole contribution; :func:`~sarcomakit.federated.privacy.central_dp_epsilon` composes the rounds.
    The noise is drawn from a generator seeded by ``seed`` and the round, so a resumed run draws the same noise.

    Args:
        noise_multiplier: ``σ``.
        clipping_norm: ``C``.
        seed: seed of the noise.
    """

    name = "central_dp"

    def __init__(self, noise_multiplier: float, clipping_norm: float, seed: int = 0) -> None:
        if not noise_multiplier > 0 or not clipping_norm > 0:
            raise ValueError("central DP needs a positive noise multiplier and clipping norm")
        self.noise_multiplier = float(noise_multiplier)
        self.clipping_norm = float(clipping_norm)
        self.seed = int(seed)
        self.rounds = 0

    def aggregate(self, global_weights: Mapping[str, torch.Tensor], updates: Sequence[SiteUpdate]) -> Weights:
        keys = [k for k, v in global_weights.items() if _floating(v)]
        clipped = []
        for update in updates:
            delta = {k: update.weights[k].to(torch.float64) - global_weights[k].to(torch.float64) for k in keys}
            norm = math.sqrt(sum(float(d.square().sum()) for d in delta.values()))
            scale = min(1.0, self.clipping_norm / norm) if norm > 0 else 1.0
            clipped.append({k: d * scale for k, d in delta.items()})
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.rounds)
        std = self.noise_multiplier * self.clipping_norm / len(clipped)
        result: Weights = {}
        for key, value in global_weights.items():
            if key in keys:
                mean = sum(c[key] for c in clipped) / len(clipped)
                noise = torch.randn(value.shape, generator=generator, dtype=torch.float64) * std
                result[key] = (value.to(torch.float64) + mean + noise).to(value.dtype)
            else:
                result[key] = value.clone()
        self.rounds += 1
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rounds = int(state.get("rounds", 0))


def build_aggregator(strategy: str, *, server_lr: float | None = None) -> Aggregator:
    """The aggregator of a strategy name (one of :data:`STRATEGIES`)."""
    if strategy in ("fedavg",):
        return FedAvg()
    if strategy == "fedprox":
        return FedProx()
    if strategy == "fedmedian":
        return FedMedian()
    if strategy in ("fedadam", "fedyogi"):
        cls = FedAdam if strategy == "fedadam" else FedYogi
        return cls() if server_lr is None else cls(server_lr=server_lr)
    raise UserInputError(f"unknown strategy '{strategy}'.", fix=f"use one of {', '.join(STRATEGIES)}.")


def secure_aggregation_error_bound(n_cases: Sequence[int], *, max_weight: float, clipping_range: float,
                                   quantization_range: int) -> float:
    """An upper bound on ``|SecAgg+ aggregate - FedAvg|`` per weight (Flower's SecAgg+ quantisation).

    Each site multiplies its weights by ``n_i / max_weight``, clips them to ``[-r, r]`` and rounds them
    stochastically to a grid of step ``2 r / Q`` (an error below one step); the server divides the sum by the
    total weight ``sum_i n_i / max_weight``, itself quantised to ``1 / Q`` per site. Weights within ``[-r, r]``
    are assumed (larger ones are clipped: choose the clipping range above the largest weight).
    """
    step = 2 * clipping_range / quantization_range
    total = sum(n_cases) / max_weight
    return len(n_cases) * (step + clipping_range / quantization_range) / total
