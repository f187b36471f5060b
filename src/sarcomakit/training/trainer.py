"""The training loop and nothing else: what to train comes in as parts, what happens around it as callbacks.

A :class:`Trainer` takes a model, an objective (the task's loss as a module), an optimizer, a data loader
and optionally a learning-rate scheduler, all built once by the caller (see :mod:`sarcomakit.training.fold`
for the factories a fold uses). Because it only calls them, any of them can be replaced by a wrapped
version: PyTorch's ``DistributedDataParallel`` model with a distributed sampler, or Opacus's
``GradSampleModule``/``DPOptimizer``/``DPDataLoader`` triple (then per-sample clipping is the optimizer's
job: pass ``grad_clip=None``). Checkpoints, logging, validation, time limits and early stopping are
:class:`Callback` objects, so the loop has no flag for any of them.

Two ways to drive it:

- :meth:`Trainer.fit` runs epochs ``state.epoch`` .. ``epochs - 1`` (a resumed trainer continues), with
  callbacks around each epoch;
- :meth:`Trainer.run_steps` runs N optimisation steps from the current weights, for a federated round:
  ``trainer.set_weights(global_weights); trainer.run_steps(n); trainer.get_weights()``.

Example:
    >>> trainer = Trainer(model, objective, optimizer, loader, device=torch.device("cpu"), epochs=10)  # doctest: +SKIP
    >>> trainer.fit()  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from sarcomakit.tasks.base import Objective


@dataclass
class TrainerState:
    """Where training stands: the next epoch to run, steps taken, the per-epoch records, and a stop request."""

    #: the next epoch to run (after an epoch ends, the number of epochs done)
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    stop_reason: str | None = None


class Callback:
    """Hooks around the loop. Subclasses override what they need; ``state_dict`` makes a callback resumable."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch of :meth:`Trainer.fit` (also after a resume)."""

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        """After an epoch's optimisation. ``record`` (``record["epoch"]`` is the epoch just run) is already the last
        entry of ``trainer.state.history``; callbacks may extend it (validation metrics) for the ones after them."""

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        """After each optimisation step (``trainer.state.step`` steps done), with the step's loss."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last epoch (or a stop), also when training failed (then ``trainer.failed`` is set)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def unwrap(model: nn.Module) -> nn.Module:
    """The user's network inside DistributedDataParallel (``.module``) or Opacus's GradSampleModule (``._module``)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_module") and isinstance(model._module, nn.Module):
            model = model._module
        else:
            return model


class Trainer:
    """Runs optimisation over a loader (see the module docstring).

    Args:
        model: the network (possibly wrapped by DDP or Opacus).
        objective: the task's loss module, called as ``objective(model, batch, device)``.
        optimizer: over the model's and the objective's trainable parameters.
        loader: yields batches for the objective; an iterable built once (its dataset's ``set_epoch``, and a
            distributed sampler's, are called at the start of every epoch).
        device: where the model lives.
        epochs: the number of epochs :meth:`fit` runs in total.
        scheduler: a learning-rate scheduler stepped once per epoch.
        callbacks: see :class:`Callback`; called in order.
        grad_clip: the maximum global norm of the gradients of every parameter the optimizer updates
            (None: no clipping, e.g. when a privacy engine clips per sample).
        amp: mixed precision (CUDA only).
        threads: CPU threads for the model while training (restored afterwards); None leaves torch's setting.
    """

    def __init__(self, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                 loader: Any, *, device: torch.device, epochs: int,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 callbacks: Sequence[Callback] = (), grad_clip: float | None = None, amp: bool = False,
                 threads: int | None = None) -> None:
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.loader = loader
        self.device = device
        self.epochs = epochs
        self.scheduler = scheduler
        self.callbacks = list(callbacks)
        self.grad_clip = grad_clip
        self.use_amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.threads = threads
        self.state = TrainerState()
        self.failed = False
        self._batches: Iterator[Any] | None = None

    # ------------------------------------------------------------------ weights and state
    def get_weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the network's weights (without DDP/Opacus wrapper prefixes)."""
        return {k: v.detach().cpu().clone() for k, v in unwrap(self.model).state_dict().items()}

    def set_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Load weights returned by :meth:`get_weights` (strictly: every key must match)."""
        unwrap(self.model).load_state_dict(dict(weights), strict=True)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: network, objective, optimizer, scheduler, scaler, loop state, callbacks."""
        return {"model": unwrap(self.model).state_dict(), "objective": self.objective.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict(), "epoch": self.state.epoch - 1, "step": self.state.step,
                "history": list(self.state.history), "callbacks": [c.state_dict() for c in self.callbacks]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`'s output: training continues with the epoch after the saved one."""
        unwrap(self.model).load_state_dict(state["model"])
        self.objective.load_state_dict(state.get("objective", {}), strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainerState(epoch=int(state["epoch"]) + 1, step=int(state.get("step", 0)),
                                  history=list(state.get("history", [])))
        for callback, saved in zip(self.callbacks, state.get("callbacks", []), strict=False):
            callback.load_state_dict(saved)

    def stop(self, reason: str) -> None:
        """Ask :meth:`fit` to stop after the current epoch (callbacks call this)."""
        self.state.stop_reason = reason

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainerState:
        """Run the remaining epochs (see the module docstring); returns the final state."""
        previous_threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            for callback in self.callbacks:
                callback.on_fit_start(self)
            while self.state.epoch < self.epochs and self.state.stop_reason is None:
                record = self._train_one_epoch()
                self.state.history.append(record)
                self.state.epoch += 1
                for callback in self.callbacks:
                    callback.on_epoch_end(self, record)
        except BaseException:
            self.failed = True
            raise
        finally:
            for callback in self.callbacks:
                callback.on_fit_end(self)
            torch.set_num_threads(previous_threads)
        return self.state

    def run_steps(self, steps: int) -> dict[str, float]:
        """Take ``steps`` optimisation steps from the current weights (a federated round); returns the mean loss
        and logged parts. The loader is cycled, starting a new epoch of samples when it runs out."""
        self._set_training(True)
        losses: list[float] = []
        parts: dict[str, list[float]] = {}
        while len(losses) < steps:
            if self._batches is None:
                self._start_epoch(self.state.epoch)
                self._batches = iter(self.loader)
            try:
                batch = next(self._batches)
            except StopIteration:
                self._batches = None
                self.state.epoch += 1
                continue
            loss, logged = self._step(batch)
            losses.append(loss)
            for key, value in logged.items():
                parts.setdefault(key, []).append(value)
        return {"train_loss": float(np.mean(losses)) if losses else math.nan,
                **{k: float(np.nanmean(v)) for k, v in parts.items()}}

    def _start_epoch(self, epoch: int) -> None:
        for source in (getattr(self.loader, "dataset", None), getattr(self.loader, "sampler", None),
                       getattr(self.loader, "batch_sampler", None)):
            if hasattr(source, "set_epoch"):
                source.set_epoch(epoch)  # type: ignore[union-attr]

    def _set_training(self, mode: bool) -> None:
        self.model.train(mode)
        self.objective.train(mode)

    def _step(self, batch: Any) -> tuple[float, dict[str, float]]:
        """One optimisation step; returns the loss and the objective's logged parts."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
            output = self.objective(self.model, batch, self.device)
        self.scaler.scale(output.total).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        loss = float(output.total.detach())
        for callback in self.callbacks:
            callback.on_step_end(self, loss)
        return loss, output.parts

    def _train_one_epoch(self) -> dict[str, float]:
        """One epoch of optimisation; returns the epoch's record (loss, learning rate, timing, data wait)."""
        epoch = self.state.epoch
        self._start_epoch(epoch)
        self._set_training(True)
        lr = float(self.optimizer.param_groups[0]["lr"])
        losses: list[float] = []
        parts: dict[str, list[float]] = {}
        waited, epoch_start = 0.0, time.perf_counter()
        fetch_start = time.perf_counter()
        for batch in self.loader:
            waited += time.perf_counter() - fetch_start
            loss, logged = self._step(batch)
            losses.append(loss)
            for key, value in logged.items():
                parts.setdefault(key, []).append(value)
            fetch_start = time.perf_counter()
        if self.scheduler is not None:
            self.scheduler.step()
        seconds = time.perf_counter() - epoch_start
        return {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)) if losses else math.nan,
                **{k: float(np.nanmean(v)) for k, v in parts.items()},
                "epoch_seconds": seconds, "data_wait_fraction": waited / max(seconds, 1e-9)}
