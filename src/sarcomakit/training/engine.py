"""The segmentation training loop of one fold: sampling, optimisation, validation, checkpoints.

One fold folder holds ``checkpoint_last.pt`` (written every epoch, for ``--resume``),
``checkpoint_best.pt`` (best validation Dice), ``history.csv`` and ``train.log``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.utils import set_determinism
from rich.console import Console

from sarcomakit.cohort_runner import progress_bar
from sarcomakit.errors import UserInputError
from sarcomakit.io.atomic import write_json, write_text
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.training.checkpoint import load_checkpoint, save_checkpoint
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.tasks import Task, build_task

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """Outcome of one fold's training."""

    fold_dir: Path
    score_name: str
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserInputError(f"unknown device '{name}'.", fix="use auto, cpu or cuda[:N].") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError("CUDA was requested but no GPU is visible.", fix="use --device cpu or auto.")
    return device


def default_num_workers(device: torch.device) -> int:
    """Data-loading processes for this machine.

    On a GPU, up to 4 processes keep it fed. On a CPU the loader competes with the model for the
    same cores, and OpenMP threads that wait on a busy core slow the model several-fold, so small
    machines (<= 4 cores) load in the training process and larger ones give the loader a quarter.
    """
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(0, min(4, cores - 1))
    return 0 if cores <= 4 else min(4, cores // 4)


def configure_cpu_threads(device: torch.device, workers: int) -> None:
    """On a CPU, give the model the cores the loader processes do not use (unless OMP_NUM_THREADS says otherwise)."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def poly_learning_rate(initial: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule: ``initial * (1 - epoch / epochs) ** exponent``."""
    return initial * (1 - epoch / epochs) ** exponent


def build_model(plan: Plan, config: TrainConfig, task: Task | None = None) -> torch.nn.Module:
    """The network of ``task`` (default: the task named by ``config.task``) for this plan and config."""
    return (task or build_task(config)).build_model(plan, config)


def _optimizer(parameters: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.learning_rate, momentum=config.momentum,
                               nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


class _FoldLog:
    """train.log and history.csv of a fold."""

    def __init__(self, fold_dir: Path) -> None:
        self.path = fold_dir / "train.log"
        self.history_path = fold_dir / "history.csv"
        self.handler = logging.FileHandler(self.path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.logger = logging.getLogger(f"sarcomakit.train.{fold_dir}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.logger.addHandler(self.handler)

    def info(self, message: str, *args: object) -> None:
        self.logger.info(message, *args)

    def write_history(self, history: list[dict[str, float]]) -> None:
        if not history:
            return
        buffer = io.StringIO()
        columns = list(dict.fromkeys(key for record in history for key in record))
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", restval="")
        writer.writeheader()
        writer.writerows(history)
        write_text(self.history_path, buffer.getvalue())

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


def train_fold(train_cases: Sequence[PreprocessedCase], val_cases: Sequence[PreprocessedCase], plan: Plan,
               config: TrainConfig, fold_dir: str | Path, *, task: Task | None = None, resume: bool = False,
               time_limit_s: float | None = None, console: Console | None = None) -> FoldResult:
    """Train one fold of ``task`` and keep its best and last checkpoints in ``fold_dir``.

    Args:
        train_cases, val_cases: preprocessed cases (with labels) of this fold.
        plan: the plan they were preprocessed with (saved into the checkpoints).
        config: resolved training configuration.
        task: what to optimise (default: the task named by ``config.task``).
        resume: continue from ``checkpoint_last.pt``; without it an existing checkpoint is an error,
            so that a finished run is never overwritten by accident.
        time_limit_s: stop after the epoch during which this many seconds have passed (the run stays
            resumable with a larger ``epochs``).
    """
    task = task or build_task(config)
    fold_dir = Path(fold_dir)
    last_path, best_path = fold_dir / "checkpoint_last.pt", fold_dir / "checkpoint_best.pt"
    if last_path.exists() and not resume:
        raise UserInputError("this fold already has a checkpoint.", path=last_path,
                             fix="add --resume to continue it, or choose a new run folder.")
    fold_dir.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    device = select_device(config.device)
    set_determinism(seed=config.seed)
    batch_size = config.batch_size or plan.batch_size
    model = task.build_model(plan, config).to(device)
    optimizer = _optimizer([*model.parameters(), *task.parameters()], config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_score, best_epoch, history = 0, -math.inf, -1, []
    if resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        task.load_state_dict(state.get("task", {}))
        start_epoch = state["epoch"] + 1
        best_score, best_epoch, history = state["best_score"], state["best_epoch"], list(state["history"])

    dataset = task.dataset(train_cases, plan, config, config.iterations_per_epoch * batch_size)
    workers = default_num_workers(device) if config.num_workers is None else config.num_workers
    configure_cpu_threads(device, workers)
    flog = _FoldLog(fold_dir)
    flog.info("training %d cases, validating %d; patch %s batch %d; device %s; %d workers",
              len(train_cases), len(val_cases), config.patch_size or plan.patch_size, batch_size, device, workers)
    started = time.perf_counter()
    epoch = start_epoch - 1
    try:
        with progress_bar(console) as progress:
            bar = progress.add_task(f"training {fold_dir.name}", total=config.epochs, completed=start_epoch,
                                    status="")
            for epoch in range(start_epoch, config.epochs):
                record = _train_one_epoch(model, task, dataset, optimizer, scaler, config, epoch, batch_size,
                                          workers, device, use_amp)
                if val_cases and (epoch % config.validate_every == 0 or epoch == config.epochs - 1):
                    record.update(task.validate(model, val_cases, plan, config, device))
                score = record.get(task.score_name, float("nan"))
                history.append(record)
                improved = not math.isnan(score) and score > best_score
                if config.checkpoint_selection == "last" or not val_cases:
                    improved = True
                if improved:
                    best_score, best_epoch = (score if not math.isnan(score) else best_score), epoch
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "task": task.state_dict(), "epoch": epoch,
                         "best_score": best_score, "best_epoch": best_epoch, "history": history,
                         "config": config.model_dump(), "plan": plan.model_dump()}
                if improved:
                    save_checkpoint(best_path, state)
                save_checkpoint(last_path, state)
                flog.write_history(history)
                flog.info("epoch %d %s (%.1fs, data wait %.1f%%)", epoch,
                          " ".join(f"{k} {v:.4g}" for k, v in record.items()
                                   if k not in ("epoch", "epoch_seconds", "data_wait_fraction")),
                          record["epoch_seconds"], 100 * record["data_wait_fraction"])
                progress.update(bar, advance=1, status=f"loss {record['train_loss']:.3f} {task.score_name} "
                                f"{score:.3f} (best {max(best_score, 0):.3f})")
                if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                    flog.info("time limit reached after epoch %d", epoch)
                    break
        if best_path.exists():
            model.load_state_dict(load_checkpoint(best_path, map_location=device)["model"])
        task.finish(model, train_cases, val_cases, plan, config, device, fold_dir)
    finally:
        flog.close()
    write_json(fold_dir / "summary.json", {"score_name": task.score_name, "best_score": best_score,
                                           "best_epoch": best_epoch, "epochs_run": epoch + 1,
                                           "seconds": time.perf_counter() - started})
    return FoldResult(fold_dir=fold_dir, score_name=task.score_name, best_score=best_score, best_epoch=best_epoch,
                      epochs_run=epoch + 1, history=history)


def _train_one_epoch(model: torch.nn.Module, task: Task, dataset: torch.utils.data.Dataset,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, config: TrainConfig,
                     epoch: int, batch_size: int, workers: int, device: torch.device,
                     use_amp: bool) -> dict[str, float]:
    """One epoch of optimisation; returns the epoch's record (loss, timing, data wait)."""
    lr = poly_learning_rate(config.learning_rate, epoch, config.epochs, config.poly_exponent)
    for group in optimizer.param_groups:
        group["lr"] = lr
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                                         prefetch_factor=4 if workers else None)
    model.train()
    losses: list[float] = []
    parts: dict[str, list[float]] = {}
    waited, epoch_start = 0.0, time.perf_counter()
    fetch_start = time.perf_counter()
    for batch in loader:
        waited += time.perf_counter() - fetch_start
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            loss, logged = task.loss(model, batch, device)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
        for key, value in logged.items():
            parts.setdefault(key, []).append(value)
        fetch_start = time.perf_counter()
    seconds = time.perf_counter() - epoch_start
    return {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)),
            **{k: float(np.nanmean(v)) for k, v in parts.items()},
            "epoch_seconds": seconds, "data_wait_fraction": waited / max(seconds, 1e-9)}
