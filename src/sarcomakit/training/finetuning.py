"""Fine-tuning from pretrained weights: load them where the model is built, and schedule their learning rate.

With ``TrainConfig.init_checkpoint`` set, :func:`prepare_finetuning` loads the checkpoint's ``init_parts`` into the
freshly built model (:func:`sarcomakit.models.pretrained.load_pretrained`, which refuses any unmatched tensor),
prints what it loaded and keeps the report in ``fold_K/init_report.json``. The optimizer then gets two parameter
groups, ``pretrained`` (the loaded tensors) and ``new`` (the rest of the network and the objective's parameters),
and :class:`FineTuningSchedule` follows nnssl's fine-tuning recipe on top of the run's own schedule:

- the ``pretrained`` group has learning rate 0 for the first ``freeze_epochs`` epochs (only the new parts learn;
  a zero rate leaves weights untouched under SGD and AdamW alike, weight decay included, and unlike
  ``requires_grad=False`` it works under DistributedDataParallel);
- each group's rate then rises linearly, step by step, over ``warmup_epochs`` epochs from its start (epoch 0 for
  ``new``, ``freeze_epochs`` for ``pretrained``), by default a tenth of the epochs for an initialised run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from sarcomakit.core import distributed
from sarcomakit.core.io.atomic import write_json
from sarcomakit.models.pretrained import LoadReport, load_pretrained, network_part, target_backbone
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.trainer import Callback, Trainer


def resolved_warmup_epochs(config: TrainConfig) -> int:
    """``warmup_epochs``, or by default a tenth of the epochs (at least one) for a run initialised from a checkpoint."""
    if config.warmup_epochs is not None:
        return config.warmup_epochs
    return max(1, round(0.1 * config.epochs)) if config.init_checkpoint else 0


class FineTuningSchedule(Callback):
    """Freeze, then warm up, the optimizer's groups by name (module docstring), as factors on the scheduled rates.

    Args:
        freeze_epochs: epochs with learning rate 0 for the ``pretrained`` group.
        warmup_epochs: epochs of linear warm-up of each group from its start.
        steps_per_epoch: optimisation steps in an epoch (the warm-up advances each step).
    """

    def __init__(self, freeze_epochs: int, warmup_epochs: int, steps_per_epoch: int) -> None:
        self.freeze_epochs = freeze_epochs
        self.warmup_epochs = warmup_epochs
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.initial: list[float] = []

    def factor(self, group: str | None, epoch: int, step_in_epoch: int) -> float:
        """The multiplier of a group's scheduled rate for the given step of ``epoch``."""
        start = self.freeze_epochs if group == "pretrained" else 0
        if epoch < start:
            return 0.0
        if epoch < start + self.warmup_epochs:
            done = (epoch - start) * self.steps_per_epoch + step_in_epoch + 1
            return done / (self.warmup_epochs * self.steps_per_epoch)
        return 1.0

    def _scheduled(self, trainer: Trainer) -> list[float]:
        """The rates the run's own scheduler gives the current epoch (recomputed for a LambdaLR, so that a run
        resumed with more epochs follows its new schedule)."""
        scheduler = trainer.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            return [float(base) * float(rule(scheduler.last_epoch))
                    for base, rule in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
        return [float(v) for v in scheduler.get_last_lr()] if scheduler is not None else self.initial

    def _apply(self, trainer: Trainer, epoch: int, step_in_epoch: int) -> None:
        scheduled = self._scheduled(trainer)
        for group, rate in zip(trainer.optimizer.param_groups, scheduled, strict=True):
            group["lr"] = rate * self.factor(group.get("name"), epoch, step_in_epoch)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.initial = [float(g["lr"]) for g in trainer.optimizer.param_groups]
        self._apply(trainer, trainer.state.epoch, 0)

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        done_in_epoch = trainer.state.step - trainer.state.epoch * self.steps_per_epoch
        self._apply(trainer, trainer.state.epoch, min(max(done_in_epoch, 0), self.steps_per_epoch - 1))

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        self._apply(trainer, trainer.state.epoch, 0)


class FineTuning:
    """The fine-tuning parts of a fold: which parameters were loaded, and the schedule callback."""

    def __init__(self, model: nn.Module, config: TrainConfig, report: LoadReport | None) -> None:
        self.model = model
        self.report = report
        backbone, _ = target_backbone(model)
        wanted = {"encoder"} if config.init_parts == "encoder" else {"encoder", "decoder"}
        self.pretrained = [p for key, p in backbone.named_parameters()
                           if config.init_checkpoint and network_part(config.network, key) in wanted]
        self.schedule = FineTuningSchedule(config.freeze_epochs if config.init_checkpoint else 0,
                                           resolved_warmup_epochs(config), config.iterations_per_epoch)

    def parameter_groups(self, objective: nn.Module) -> list[dict[str, Any]]:
        """``pretrained`` and ``new`` parameter groups (the objective's learnt parameters are new)."""
        loaded = {id(p) for p in self.pretrained}
        rest = [p for p in [*self.model.parameters(), *objective.parameters()] if id(p) not in loaded]
        return [{"params": self.pretrained, "name": "pretrained"}, {"params": rest, "name": "new"}]


def prepare_finetuning(model: nn.Module, config: TrainConfig, fold_dir: Path, *, load: bool,
                       console: Console | None = None) -> FineTuning | None:
    """Load ``config.init_checkpoint`` into ``model`` (when ``load``; a resumed fold has its own weights) and return
    the fold's fine-tuning parts; None when the run neither starts from a checkpoint nor warms up."""
    if not config.init_checkpoint and not config.warmup_epochs:
        return None
    report = None
    if config.init_checkpoint and load:
        report = load_pretrained(model, config.network, config.init_checkpoint, config.init_parts)
        if distributed.is_main():
            (console or Console(stderr=True)).print(f"{fold_dir.name}: {report.summary()}", highlight=False)
            fold_dir.mkdir(parents=True, exist_ok=True)
            write_json(fold_dir / "init_report.json", {"checkpoint": str(config.init_checkpoint), **report.to_dict()})
    return FineTuning(model, config, report)


__all__ = ["FineTuning", "FineTuningSchedule", "prepare_finetuning", "resolved_warmup_epochs"]
