"""The site side of federated training: train a task on one site's cases from given weights, and evaluate weights.

This is the one function a federated framework calls on a hospital's machine (the in-process simulator here; a
Flower ``ClientApp`` later): "train this task on this site's cases from these weights for N local steps, return
the new weights, the number of cases and metrics", plus "evaluate these weights on this site's validation cases".
It builds the fold's parts with the same factories as ordinary training (:mod:`sarcomakit.training.fold`) and
drives the :class:`~sarcomakit.training.trainer.Trainer` with ``set_weights``/``run_steps``/``get_weights``.

Each round starts a fresh local optimiser (as FedAvg prescribes) with a constant learning rate; the patches a
site draws are deterministic for (seed, round, site). FedProx adds ``(mu/2) * ||w - w_global||^2`` (squared: its
gradient is ``mu (w - w_global)``, Li et al. 2020) to the task's loss through :class:`ProximalObjective`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.federated.aggregators import SiteUpdate, Weights
from sarcomakit.federated.privacy import (
    PatientPatchDataset,
    PerPatientSegmentationObjective,
    SitePrivacy,
    check_private_task,
)
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import LossOutput, Objective, Task
from sarcomakit.training.fold import make_loader, make_optimizer
from sarcomakit.training.trainer import Trainer, unwrap


@dataclass
class Site:
    """One site's preprocessed training and validation cases."""

    name: str
    train_cases: list[PreprocessedCase] = field(default_factory=list)
    val_cases: list[PreprocessedCase] = field(default_factory=list)


class SiteSkipped(Exception):
    """A site cannot take part (no cases, no labels...); the round goes on without it."""


def proximal_term(model: nn.Module, global_weights: Mapping[str, torch.Tensor], mu: float) -> torch.Tensor:
    """``(mu/2) * sum_p ||p - p_global||^2`` over the network's trainable parameters."""
    total: torch.Tensor | None = None
    for name, parameter in unwrap(model).named_parameters():
        if not parameter.requires_grad:
            continue
        anchor = global_weights[name].to(parameter.device, parameter.dtype)
        squared = (parameter - anchor).pow(2).sum()
        total = squared if total is None else total + squared
    if total is None:
        raise ValueError("the model has no trainable parameters")
    return 0.5 * mu * total


class ProximalObjective(Objective):
    """FedProx: a task's objective plus :func:`proximal_term` towards the round's global weights.

    Args:
        inner: the task's objective.
        global_weights: the weights the round started from (``w_global``).
        mu: the proximal coefficient (0 gives the inner objective).
    """

    def __init__(self, inner: Objective, global_weights: Mapping[str, torch.Tensor], mu: float) -> None:
        super().__init__()
        self.inner = inner
        self.anchor = {k: v.detach().clone() for k, v in global_weights.items()}
        self.mu = mu

    def forward(self, model: nn.Module, batch: Mapping[str, object], device: torch.device) -> LossOutput:
        output = self.inner(model, batch, device)
        term = proximal_term(model, self.anchor, self.mu)
        return LossOutput(output.total + term, {**output.parts, "proximal": float(term.detach())})


def _site_seed(config: TrainConfig, round_index: int, site_index: int) -> int:
    return config.seed + 7919 * round_index + 104729 * site_index


def train_site(task: Task, plan: Plan, config: TrainConfig, site: Site, weights: Mapping[str, torch.Tensor], *,
               steps: int, round_index: int = 0, site_index: int = 0, mu: float = 0.0,
               privacy: SitePrivacy | None = None, device: torch.device | None = None) -> SiteUpdate:
    """Train ``task`` on the site's training cases from ``weights`` for ``steps`` optimisation steps.

    Args:
        task, plan, config: what to train and how (the batch size is the plan's unless the config sets one).
        site: the site's preprocessed cases.
        weights: the global weights to start from.
        steps: local optimisation steps.
        round_index, site_index: make the site's sampling deterministic and different per round.
        mu: FedProx's proximal coefficient (0: plain local training).
        privacy: patient-level DP-SGD for this site (its accountant continues across rounds).
        device: where to train (default CPU).

    Returns:
        The new weights, the number of training cases (the aggregation weight) and the mean training loss
        (under DP, ``privacy`` holds the accountant's history, epsilon included).

    Raises:
        SiteSkipped: the site has no training cases.
    """
    device = device or torch.device("cpu")
    if not site.train_cases:
        raise SiteSkipped("no training cases")
    if steps < 1:
        raise UserInputError("local steps must be at least 1.", fix="use --local-steps 1 or more.")
    batch_size = config.batch_size or plan.batch_size
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(_site_seed(config, round_index, site_index))
        model = task.build_model(plan, config).to(device)
        model.load_state_dict(dict(weights), strict=True)
        if privacy is not None:
            check_private_task(task)
            patient_patches = PatientPatchDataset(site.train_cases, plan, config)
            objective: Objective = PerPatientSegmentationObjective((len(plan.channels), *patient_patches.patch_size))
            dataset: torch.utils.data.Dataset = patient_patches
            batch_size = privacy.batch_size
        else:
            objective = task.objective(site.train_cases, plan, config)
            dataset = task.training_data(site.train_cases, plan, config, steps * batch_size)
        if mu > 0:
            objective = ProximalObjective(objective, weights, mu)
        objective = objective.to(device)
        optimizer = make_optimizer([*model.parameters(), *objective.parameters()], config)
        loader = make_loader(dataset, batch_size, 0, device)
        network: nn.Module = model
        accountant = None
        if privacy is not None:
            network, optimizer, loader, accountant = privacy.make_private(model, optimizer, loader)
        trainer = Trainer(network, objective, optimizer, loader, device=device, epochs=1,
                          grad_clip=None if privacy is not None else config.grad_clip, amp=config.amp)
        trainer.state.epoch = round_index  # a round's patches differ from the previous round's
        metrics = trainer.run_steps(steps)
        if privacy is not None:
            privacy.record(accountant)
        return SiteUpdate(site=site.name, weights=trainer.get_weights(), n_cases=len(site.train_cases),
                          metrics=metrics)


def evaluate_site(task: Task, plan: Plan, config: TrainConfig, site: Site, weights: Mapping[str, torch.Tensor], *,
                  device: torch.device | None = None) -> dict[str, float]:
    """The task's validation metrics of ``weights`` on the site's validation cases (empty when it has none)."""
    device = device or torch.device("cpu")
    if not site.val_cases:
        return {}
    model = task.build_model(plan, config).to(device)
    model.load_state_dict(dict(weights), strict=True)
    model.eval()
    with torch.no_grad():
        return task.validate(model, site.val_cases, plan, config, device)


def initial_weights(task: Task, plan: Plan, config: TrainConfig) -> Weights:
    """The global model's starting weights (deterministic for the config's seed)."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        return {k: v.detach().clone() for k, v in task.build_model(plan, config).state_dict().items()}


def site_cases(sites: Sequence[Site]) -> tuple[list[PreprocessedCase], list[PreprocessedCase]]:
    """All sites' training and validation cases."""
    return [c for s in sites for c in s.train_cases], [c for s in sites for c in s.val_cases]
