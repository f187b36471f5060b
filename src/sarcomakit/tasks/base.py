"""The task contract: what a model is for, from its network to what prediction writes.

A task declares what it needs from a cohort (:class:`TaskRequirements`), builds its network, its
training data and its objective, validates, and turns a network's output for one case into the case's
prediction (:meth:`Task.infer`, :meth:`Task.combine`, :meth:`Task.case_row`). The trainer, the run
folder and the predictor know nothing else about a task, so a new capability (self-supervised
pretraining, interactive segmentation, learnable preprocessing) is a new task, never a branch in them.

Options of a task are the keyword arguments of its constructor (documented in its docstring's
``Args``); ``sarcomakit train --task NAME --task-option key=value`` passes them and ``sarcomakit tasks``
lists them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from sarcomakit.core.registry import Registry

if TYPE_CHECKING:
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.planning.plan import Plan
    from sarcomakit.planning.preprocess import PreprocessedCase
    from sarcomakit.runs.config import TrainConfig


@dataclass(frozen=True)
class TaskRequirements:
    """What a task needs from a cohort.

    Attributes:
        needs_labels: cases without a mask are left out of training (``False``: every case is used,
            as self-supervised tasks do).
        allow_missing_channels: a missing modality is zero-filled and flagged instead of failing the case.
        stratify_clinical: cross-validation folds are also stratified by grade and event.
    """

    needs_labels: bool = True
    allow_missing_channels: bool = False
    stratify_clinical: bool = False


@dataclass
class LossOutput:
    """The loss to minimise for one batch, and named parts to log (plain floats)."""

    total: torch.Tensor
    parts: dict[str, float] = field(default_factory=dict)


class Objective(nn.Module, ABC):
    """A task's training loss as a module: its learnt parameters (e.g. loss weights) are optimised with the
    network's, and its state (e.g. a risk memory) is saved in checkpoints through ``state_dict``."""

    @abstractmethod
    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        """The loss of ``model`` on one batch from the task's training data."""


@dataclass
class CaseOutput:
    """A network's answer for one preprocessed case.

    Attributes:
        probabilities: class probabilities (K, Z, Y, X) on the preprocessed grid, or None for a task that
            segments nothing.
        values: case-level outputs by name (e.g. grade probabilities, log-risk).
    """

    probabilities: torch.Tensor | None
    values: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """Base class of tasks (see the module docstring).

    Args:
        manifest: the cohort, for tasks whose targets are per-case fields (grade, survival); tasks that learn
            only from images ignore it.
    """

    #: the registry name (``TrainConfig.task``)
    name: ClassVar[str]
    #: key of the validation metric that selects the best checkpoint (higher is better)
    score_name: ClassVar[str] = "val_score"
    requirements: ClassVar[TaskRequirements] = TaskRequirements()
    #: columns of the per-case table that prediction writes (empty: the task writes masks only)
    case_columns: ClassVar[tuple[str, ...]] = ()
    #: the file name of that table in the prediction folder
    case_table: ClassVar[str] = "case_predictions.csv"

    def __init__(self, manifest: Manifest | None = None) -> None:
        self.manifest = manifest

    # ------------------------------------------------------------------ training
    @abstractmethod
    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        """The network for this plan and configuration."""

    @abstractmethod
    def training_data(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                      length: int) -> torch.utils.data.Dataset:
        """``length`` training samples from ``cases`` (a dataset with ``set_epoch(epoch)`` draws anew each epoch)."""

    @abstractmethod
    def objective(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> Objective:
        """The loss for training on ``cases`` (which may set, e.g., class weights from them)."""

    @abstractmethod
    def validate(self, model: nn.Module, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                 device: torch.device) -> dict[str, float]:
        """Validation metrics, including :attr:`score_name`."""

    def finish(self, model: nn.Module, train_cases: Sequence[PreprocessedCase],
               val_cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig, device: torch.device,
               fold: int, fold_dir: Path) -> dict[str, Any]:
        """After training fold ``fold``, with the selected weights loaded: write task outputs into ``fold_dir``
        (e.g. out-of-fold predictions) and return the fold's task state (JSON-able), which prediction gets
        back in :meth:`combine`."""
        return {}

    # ------------------------------------------------------------------ prediction
    @abstractmethod
    def infer(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
              device: torch.device, *, overlap: float, mirror_axes: Sequence[int] = ()) -> CaseOutput:
        """One network's output for one preprocessed case."""

    def combine(self, outputs: Sequence[CaseOutput], fold_states: Sequence[Mapping[str, Any]]) -> CaseOutput:
        """The ensemble's output from its members' (one per fold): the mean of probabilities and of numeric
        values. ``fold_states`` are what :meth:`finish` returned for those folds."""
        probabilities = None
        if outputs and outputs[0].probabilities is not None:
            members = [o.probabilities for o in outputs if o.probabilities is not None]
            if len(members) != len(outputs):
                raise ValueError("some ensemble members give class probabilities and some do not")
            probabilities = sum(members[1:], members[0]) / len(members)
        values = {key: np.mean([np.asarray(o.values[key], dtype=float) for o in outputs], axis=0)
                  for key in (outputs[0].values if outputs else {})}
        return CaseOutput(probabilities=probabilities, values=values)

    def case_row(self, case_id: str, output: CaseOutput) -> dict[str, Any]:
        """The case's row of :attr:`case_table` (keys among :attr:`case_columns`)."""
        return {"case_id": case_id}


def channel_availability(case: PreprocessedCase, channels: Sequence[str]) -> np.ndarray:
    """1 for each plan channel present in the case, 0 for one that was missing and zero-filled."""
    missing = set(case.properties.get("missing_channels", []))
    return np.array([0.0 if ch in missing else 1.0 for ch in channels], dtype=np.float32)


def case_tensor(case: PreprocessedCase, device: torch.device) -> torch.Tensor:
    """The case's (C, Z, Y, X) data as float32 on ``device`` (a copy: cached cases may be read-only memory maps)."""
    return torch.from_numpy(np.array(case.data, dtype=np.float32)).to(device)


#: Tasks by name. ``sarcomakit.tasks`` registers the built-in ones when imported.
TASKS: Registry[type[Task]] = Registry("task", option="--task")
