"""Callbacks of the training loop: validation, checkpoints, logs and progress, time limits, early stopping.

Each is one concern; :func:`sarcomakit.training.fold.train_fold` assembles them for a fold. On several
processes (DistributedDataParallel) only rank 0 writes files and prints; every rank validates its share
of the validation cases and the metrics are averaged over ranks, so that every rank takes the same
decisions (best checkpoint, early stop).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sarcomakit.core import distributed
from sarcomakit.core.io.atomic import write_text
from sarcomakit.runs.checkpoint import save_checkpoint
from sarcomakit.training.trainer import Callback, Trainer


class Validation(Callback):
    """Adds the task's validation metrics to the epoch record every ``every`` epochs and after the last one.

    Args:
        validate: ``validate(model, cases) -> metrics`` (the task's, bound to plan, config and device).
        cases: validation cases (each rank validates its share when training is distributed).
        every: validate every this many epochs.
    """

    def __init__(self, validate: Callable[[torch.nn.Module, Sequence[Any]], dict[str, float]],
                 cases: Sequence[Any], every: int = 1) -> None:
        self.validate = validate
        self.cases = list(cases)
        self.every = every

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        epoch = int(record["epoch"])
        if not self.cases or not (epoch % self.every == 0 or epoch == trainer.epochs - 1):
            return
        from sarcomakit.training.trainer import unwrap

        shard = distributed.shard(self.cases)
        metrics = self.validate(unwrap(trainer.model), shard) if shard else {}
        record.update(distributed.mean_metrics(metrics, weight=len(shard)))


class Checkpoint(Callback):
    """Keeps ``checkpoint_last.pt`` (every epoch, for resuming) and ``checkpoint_best.pt`` (the selected epoch).

    Args:
        fold_dir: where the checkpoints go.
        score_name: the record key that selects the best epoch (higher is better).
        selection: ``validation`` (best score) or ``last`` (every epoch replaces the best, as nnU-Net's final
            checkpoint); without validation scores the last epoch is kept.
        extra: saved in every checkpoint beside the trainer's state (plan, config) so that a checkpoint alone
            suffices to predict.
    """

    def __init__(self, fold_dir: Path, score_name: str, selection: str = "validation",
                 extra: Mapping[str, Any] | None = None) -> None:
        self.last_path = fold_dir / "checkpoint_last.pt"
        self.best_path = fold_dir / "checkpoint_best.pt"
        self.score_name = score_name
        self.selection = selection
        self.extra = dict(extra or {})
        self.best_score = -math.inf
        self.best_epoch = -1

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        score = record.get(self.score_name, math.nan)
        improved = not math.isnan(score) and score > self.best_score
        if self.selection == "last" or self.score_name not in record:
            improved = improved or self.selection == "last" or self.best_epoch < 0 or math.isnan(score)
        if improved:
            self.best_score = score if not math.isnan(score) else self.best_score
            self.best_epoch = int(record["epoch"])
        if not distributed.is_main():
            return
        state = {**trainer.state_dict(), **self.extra, "best_score": self.best_score, "best_epoch": self.best_epoch}
        if improved:
            save_checkpoint(self.best_path, state)
        save_checkpoint(self.last_path, state)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_score = float(state.get("best_score", -math.inf))
        self.best_epoch = int(state.get("best_epoch", -1))


class TimeLimit(Callback):
    """Stops after the epoch during which ``seconds`` have passed since :meth:`Trainer.fit` started (the run stays
    resumable with more epochs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        if time.perf_counter() - self.started > self.seconds:
            trainer.stop(f"time limit of {self.seconds:.0f} s reached")


class EarlyStopping(Callback):
    """Stops when ``score_name`` has not improved by more than ``min_delta`` for ``patience`` validated epochs."""

    def __init__(self, score_name: str, patience: int, min_delta: float = 0.0) -> None:
        self.score_name = score_name
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.waited = 0

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        score = record.get(self.score_name, math.nan)
        if math.isnan(score):
            return
        if score > self.best + self.min_delta:
            self.best, self.waited = score, 0
            return
        self.waited += 1
        if self.waited >= self.patience:
            trainer.stop(f"no improvement of {self.score_name} for {self.patience} validations")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "waited": self.waited}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state.get("best", -math.inf))
        self.waited = int(state.get("waited", 0))


class FoldLog(Callback):
    """``train.log`` and ``history.csv`` in the fold folder, and one progress line per epoch on the console.

    The line (epoch, loss, validation score, elapsed and remaining time) is printed whether or not the
    output is a terminal, so that a log file, a CI log or a notebook shows progress too.
    """

    def __init__(self, fold_dir: Path, score_name: str, console: Console | None = None,
                 header: str | None = None) -> None:
        self.fold_dir = fold_dir
        self.score_name = score_name
        self.console = console or Console(stderr=True)
        self.header = header
        self.logger: logging.Logger | None = None
        self.handler: logging.Handler | None = None
        self.started = time.perf_counter()
        self.first_epoch = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()
        self.first_epoch = trainer.state.epoch
        if not distributed.is_main():
            return
        self.handler = logging.FileHandler(self.fold_dir / "train.log")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.logger = logging.getLogger(f"sarcomakit.train.{self.fold_dir.resolve()}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)
        if self.header:
            self.logger.info("%s", self.header)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        if not distributed.is_main():
            return
        epoch = int(record["epoch"])
        details = " ".join(f"{k} {v:.4g}" for k, v in record.items()
                           if k not in ("epoch", "epoch_seconds", "data_wait_fraction"))
        assert self.logger is not None
        self.logger.info("epoch %d %s (%.1fs, data wait %.1f%%)", epoch, details, record["epoch_seconds"],
                         100 * record["data_wait_fraction"])
        self._write_history(trainer.state.history)
        elapsed = time.perf_counter() - self.started
        done = epoch + 1 - self.first_epoch
        remaining = elapsed / max(done, 1) * (trainer.epochs - epoch - 1)
        score = record.get(self.score_name)
        shown = f" {self.score_name} {score:.3f}" if score is not None and not math.isnan(score) else ""
        self.console.print(f"{self.fold_dir.name} epoch {epoch + 1}/{trainer.epochs}: loss "
                           f"{record['train_loss']:.4f}{shown}; {_duration(elapsed)} elapsed, "
                           f"~{_duration(remaining)} left", highlight=False, soft_wrap=True)
        if not self.console.is_terminal:
            sys.stderr.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.logger is not None and self.handler is not None:
            if trainer.state.stop_reason:
                self.logger.info("stopped: %s", trainer.state.stop_reason)
            self.logger.removeHandler(self.handler)
            self.handler.close()
            self.logger = self.handler = None

    def _write_history(self, history: list[dict[str, float]]) -> None:
        buffer = io.StringIO()
        columns = list(dict.fromkeys(key for record in history for key in record))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(history)
        write_text(self.fold_dir / "history.csv", buffer.getvalue())


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
