"""Patient-level differential privacy inside a site: Opacus DP-SGD where the privacy unit is the patient.

Why each piece is here:

- **The unit is the patient, not the patch.** :class:`PatientPatchDataset` has one item per patient and draws one
  patch of that patient per visit; Opacus's Poisson sampler then includes each patient in a step independently
  with probability ``q``, so per-sample clipping bounds each patient's contribution to a step. Sampling patches
  as the samples would let a patient with many patches contribute many clipped gradients.
- **Per-sample losses.** The training loss of segmentation (Dice over the whole batch) couples the patients of a
  batch; under DP the loss is each patient's own Dice + cross-entropy (a voxel mean per sample), averaged over
  the batch (:class:`PerPatientSegmentationObjective`).
- **One accountant per site for the whole federated run.** The noise multiplier is chosen once, from the target
  epsilon and the planned number of steps over all rounds, and a site's PRV accountant keeps its history across
  rounds (Flower's Opacus example restarts it every round, which under-reports the budget spent). epsilon is
  reported from the PRV accountant, and from the RDP accountant for comparison.
- **delta <= 1/(10 N)** with N the site's number of patients, the usual bound that keeps delta well below the
  chance of leaking one patient outright.
- **The Cox loss couples patients** (each patient's partial likelihood involves everyone still at risk, and the
  risk memory carries other batches), so per-sample clipping would not bound one patient's influence: the
  multi-task task is refused under DP (:func:`check_private_task`); only voxel-wise segmentation is trained
  privately.
- Opacus cannot take in-place activations (MONAI's default LeakyReLU is in place) nor BatchNorm: the network is
  made non-in-place and checked with ``ModuleValidator`` (InstanceNorm/GroupNorm pass).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.losses.segmentation import dice_ce_loss
from sarcomakit.tasks.base import LossOutput, Objective, Task
from sarcomakit.tasks.patches import CaseVolume, augmentation_pipeline, crop_patch

if TYPE_CHECKING:
    from sarcomakit.planning.plan import Plan
    from sarcomakit.planning.preprocess import PreprocessedCase
    from sarcomakit.runs.config import TrainConfig

#: tasks whose loss is a mean of independent per-patient terms, so that DP-SGD bounds a patient's influence
PRIVATE_TASKS = ("segmentation",)


def check_private_task(task: Task) -> None:
    """Refuse a task whose loss couples patients (module docstring)."""
    if task.name not in PRIVATE_TASKS:
        reason = (" Its Cox loss couples patients (risk sets and the risk memory), so per-patient clipping would not "
                  "bound one patient's influence." if task.name == "multitask" else "")
        raise UserInputError(f"differential privacy is not available for the task '{task.name}'.{reason}",
                             fix="train the segmentation task with --dp-epsilon, or the multi-task model without "
                                 "differential privacy.")


def prepare_for_privacy(model: nn.Module) -> nn.Module:
    """Make activations non-in-place and check the layers with Opacus's ``ModuleValidator``."""
    from opacus.validators import ModuleValidator

    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False  # type: ignore[assignment]
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise UserInputError(f"the network has layers DP-SGD cannot train per sample ({errors[0]}).",
                             fix="use a network with instance or group normalisation (the default resunet).")
    return model


def require_opacus() -> None:
    """Opacus is an optional dependency (the ``privacy`` extra): say how to install it when it is missing."""
    try:
        import opacus  # noqa: F401
    except ImportError as exc:
        raise UserInputError("differential privacy needs Opacus, which is not installed.",
                             fix="pip install 'sarcomakit[privacy]' (opacus>=1.6).") from exc


#: the largest target epsilon accepted (beyond it DP-SGD's noise search does not converge, and protects nothing)
MAX_EPSILON = 100.0

#: Rényi orders of the client-level accountant (Opacus's RDP defaults)
RDP_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))


def central_dp_epsilon(noise_multiplier: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """Client-level epsilon of central DP (each site's clipped update, Gaussian noise on their mean) after
    ``rounds`` rounds: the sampled Gaussian mechanism's Rényi DP composed over the rounds (Opacus's RDP analysis,
    Mironov 2017) and converted at ``delta``. The unit is a site: its whole update, every patient of it.
    ``sample_rate`` is the share of sites sampled per round (1: every site, no amplification)."""
    require_opacus()
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=rounds, orders=list(RDP_ORDERS))
    epsilon, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(epsilon)


def central_dp_summary(noise_multiplier: float, clipping_norm: float, rounds: int, delta: float, *,
                       mechanism: str) -> dict[str, Any]:
    """What a run folder's ``privacy.json`` states under client-level DP after ``rounds`` rounds (unit: a site)."""
    by_round = {str(r): central_dp_epsilon(noise_multiplier, r, delta) for r in range(1, rounds + 1)}
    return {"unit": "site", "mechanism": mechanism, "accountant": "RDP (Opacus), no sampling amplification",
            "noise_multiplier": noise_multiplier, "clipping_norm": clipping_norm, "delta": delta,
            "rounds": rounds, "epsilon": by_round.get(str(rounds), 0.0), "epsilon_by_round": by_round}


def default_delta(n_patients: int) -> float:
    """``1 / (10 N)``: the largest delta accepted for a site of N patients."""
    return 1.0 / (10 * max(1, n_patients))


@dataclass
class SitePrivacy:
    """A site's DP-SGD settings and its accountant, kept across the rounds of a federated run.

    Attributes:
        n_patients: the site's training patients (the privacy unit).
        batch_size: the expected number of patients per step.
        noise_multiplier: Gaussian noise standard deviation over the clipping norm.
        max_grad_norm: per-patient clipping norm.
        delta: the delta epsilon is reported at.
        history: the accountant's history, ``(noise_multiplier, sample_rate, steps)`` entries (saved for resume).
    """

    n_patients: int
    batch_size: int
    noise_multiplier: float
    max_grad_norm: float
    delta: float
    history: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def sample_rate(self) -> float:
        """Opacus's Poisson rate ``1 / len(loader)`` for this site's loader."""
        return 1.0 / math.ceil(self.n_patients / self.batch_size)

    @classmethod
    def plan(cls, n_patients: int, batch_size: int, *, target_epsilon: float, total_steps: int,
             max_grad_norm: float = 1.0, delta: float | None = None) -> SitePrivacy:
        """Choose the noise that spends ``target_epsilon`` (PRV accountant, to within 0.05) over ``total_steps``
        steps."""
        require_opacus()
        from opacus.accountants.utils import get_noise_multiplier

        if n_patients < 1:
            raise UserInputError("a site without patients cannot be trained privately.")
        if not 0 < target_epsilon <= MAX_EPSILON:
            raise UserInputError(f"a target epsilon of {target_epsilon:g} is outside (0, {MAX_EPSILON:g}]: above that "
                                 "DP protects nothing (and the accountant's noise search fails to converge).",
                                 fix="train without DP, or give an epsilon such as 1, 4 or 8.")
        limit = default_delta(n_patients)
        if delta is None:
            delta = limit
        elif delta > limit:
            raise UserInputError(f"delta {delta:g} is above 1/(10 N) = {limit:g} for a site of {n_patients} "
                                 "patients.", fix=f"use --dp-delta {limit:g} or smaller (or leave it out).")
        batch = max(1, min(batch_size, n_patients))
        site = cls(n_patients=n_patients, batch_size=batch, noise_multiplier=0.0, max_grad_norm=max_grad_norm,
                   delta=delta)
        site.noise_multiplier = float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                                           sample_rate=site.sample_rate, steps=total_steps,
                                                           accountant="prv", epsilon_tolerance=0.05))
        return site

    def accountant(self, kind: str = "prv") -> Any:
        """A fresh Opacus accountant of ``kind`` holding this site's history."""
        from opacus.accountants import create_accountant

        accountant = create_accountant(kind)
        accountant.history = [tuple(entry) for entry in self.history]
        return accountant

    def epsilon(self, kind: str = "prv") -> float:
        """The epsilon spent so far at :attr:`delta` (0 before any step)."""
        if not self.history:
            return 0.0
        return float(self.accountant(kind).get_epsilon(delta=self.delta))

    def make_private(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                     loader: torch.utils.data.DataLoader) -> tuple[nn.Module, torch.optim.Optimizer, Any, Any]:
        """Wrap the parts with Opacus (Poisson sampling over patients); the accountant continues this site's
        history. Returns the model, optimizer, loader and the accountant (call :meth:`record` after training)."""
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="prv")
        engine.accountant = self.accountant("prv")
        private_model, private_optimizer, private_loader = engine.make_private(
            module=prepare_for_privacy(model), optimizer=optimizer, data_loader=loader,
            noise_multiplier=self.noise_multiplier, max_grad_norm=self.max_grad_norm, poisson_sampling=True)
        return private_model, private_optimizer, private_loader, engine.accountant

    def record(self, accountant: Any) -> None:
        """Keep the accountant's history after a round."""
        self.history = [(float(s), float(q), int(n)) for s, q, n in accountant.history]

    def summary(self) -> dict[str, Any]:
        """What the run folder states about this site's privacy."""
        steps = sum(n for _, _, n in self.history)
        return {"unit": "patient", "epsilon": self.epsilon("prv"), "epsilon_rdp": self.epsilon("rdp"),
                "delta": self.delta, "accountant": "prv", "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.max_grad_norm, "sample_rate": self.sample_rate,
                "expected_patients_per_step": self.batch_size, "n_patients": self.n_patients, "steps": steps}

    def state_dict(self) -> dict[str, Any]:
        return {"n_patients": self.n_patients, "batch_size": self.batch_size,
                "noise_multiplier": self.noise_multiplier, "max_grad_norm": self.max_grad_norm,
                "delta": self.delta, "history": [list(h) for h in self.history]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SitePrivacy:
        return cls(n_patients=int(state["n_patients"]), batch_size=int(state["batch_size"]),
                   noise_multiplier=float(state["noise_multiplier"]), max_grad_norm=float(state["max_grad_norm"]),
                   delta=float(state["delta"]),
                   history=[(float(s), float(q), int(n)) for s, q, n in state.get("history", [])])


class PatientPatchDataset(torch.utils.data.Dataset):
    """One item per patient: each visit draws one patch of that patient (deterministic for seed, epoch, patient and
    visit), so Poisson sampling over this dataset samples patients."""

    def __init__(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.volumes = [CaseVolume(c, seed=config.seed + i) for i, c in enumerate(cases)]
        self.patch_size = tuple(int(p) for p in (config.patch_size or plan.patch_size))
        self.foreground_fraction = config.foreground_fraction
        self.transform = augmentation_pipeline(config.augmentation, self.patch_size)
        self.seed = config.seed
        self.epoch = 0
        self.visits = [0] * len(self.volumes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The patient's (image, label) patch: a tuple, because Opacus builds the shape of an empty first step
        from the items of ``dataset[0]``, which for a dict would be its keys."""
        rng = np.random.default_rng((self.seed, self.epoch, index, self.visits[index]))
        self.visits[index] += 1
        image, label = crop_patch(self.volumes[index], self.patch_size, rng,
                                  rng.random() < self.foreground_fraction)
        sample: dict[str, Any] = {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}
        if len(self.transform.transforms):
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            sample = self.transform(sample)
        return (torch.as_tensor(sample["image"]).float().as_subclass(torch.Tensor),
                torch.as_tensor(sample["label"]).round().long().as_subclass(torch.Tensor))


class PerPatientSegmentationObjective(Objective):
    """Dice + cross-entropy computed per patient (per sample) and averaged: one loss value per privacy unit.

    A Poisson-sampled step may have no patient: the network then sees one all-zero patch with a zero loss, so
    the step is pure noise (what DP-SGD prescribes) and every parameter still gets a (zero) per-sample gradient.

    Args:
        sample_shape: ``(C, *patch)``, the shape of one patch (for the all-zero patch of an empty step).
    """

    def __init__(self, sample_shape: Sequence[int]) -> None:
        super().__init__()
        self.loss = dice_ce_loss()
        self.sample_shape = tuple(int(s) for s in sample_shape)

    def forward(self, model: nn.Module, batch: Any, device: torch.device) -> LossOutput:
        images, labels = (batch["image"], batch["label"]) if isinstance(batch, Mapping) else batch
        if images.shape[0] == 0:  # Opacus gives an empty step as tensors with batch size 0
            dummy = torch.zeros((1, *self.sample_shape), device=device)
            return LossOutput(model(dummy).sum() * 0.0, {"patients": 0.0})
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        losses = torch.stack([self.loss(logits[i:i + 1], labels[i:i + 1]) for i in range(images.shape[0])])
        return LossOutput(losses.mean(), {"patients": float(images.shape[0])})
