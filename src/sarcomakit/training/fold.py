"""One fold of a run: a task's parts built by the factories below, trained by the :class:`Trainer` with callbacks.

A fold folder holds ``checkpoint_last.pt`` (written every epoch, for ``--resume``), ``checkpoint_best.pt``
(the selected epoch), ``history.csv``, ``train.log``, ``summary.json`` and ``task_state.json`` (what the
task's :meth:`~sarcomakit.tasks.base.Task.finish` returned, which prediction reads back).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from sarcomakit.core import distributed
from sarcomakit.core.device import cpu_threads_for_model, default_num_workers, select_device
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import Task, build_task
from sarcomakit.training.callbacks import Checkpoint, EarlyStopping, FoldLog, TimeLimit, Validation
from sarcomakit.training.finetuning import prepare_finetuning
from sarcomakit.training.trainer import Callback, Trainer, unwrap


@dataclass
class FoldResult:
    """Outcome of one fold's training."""

    fold_dir: Path
    score_name: str
    best_score: float
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def poly_learning_rate(initial: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule: ``initial * (1 - epoch / epochs) ** exponent``."""
    return initial * (1 - epoch / epochs) ** exponent


# ---------------------------------------------------------------------- factories
def make_optimizer(parameters: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
                   config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (nnU-Net) or AdamW, over the given trainable parameters (or parameter groups)."""
    given: list[Any] = list(parameters)
    trainable: list[Any] = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in given] \
        if given and isinstance(given[0], dict) else [p for p in given if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=config.learning_rate, momentum=config.momentum,
                               nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The poly schedule stepped once per epoch (:func:`poly_learning_rate` relative to the initial rate)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: max(0.0, 1 - epoch / config.epochs) ** config.poly_exponent)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int, workers: int,
                device: torch.device) -> torch.utils.data.DataLoader:
    """The training loader, built once. Samples are drawn by index from the dataset (deterministic for seed, epoch
    and index); on several processes a distributed sampler gives each rank its own indices."""
    sampler: torch.utils.data.Sampler[int] | None = None
    if distributed.active():
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False, drop_last=True)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       worker_init_fn=_worker_init, prefetch_factor=4 if workers else None)


def build_model(plan: Plan, config: TrainConfig, task: Task | None = None) -> torch.nn.Module:
    """The network of ``task`` (default: the task named by ``config.task``) for this plan and config."""
    return (task or build_task(config)).build_model(plan, config)


# ---------------------------------------------------------------------- one fold
def train_fold(train_cases: Sequence[PreprocessedCase], val_cases: Sequence[PreprocessedCase], plan: Plan,
               config: TrainConfig, fold_dir: str | Path, *, fold: int, task: Task | None = None,
               resume: bool = False, time_limit_s: float | None = None, early_stopping: int | None = None,
               callbacks: Sequence[Callback] = (), console: Console | None = None) -> FoldResult:
    """Train fold ``fold`` of ``task`` and keep its best and last checkpoints in ``fold_dir``.

    Args:
        train_cases, val_cases: preprocessed cases of this fold.
        plan: the plan they were preprocessed with (saved into the checkpoints).
        config: resolved training configuration.
        fold: the fold's index (written into the task's outputs).
        task: what to optimise (default: the task named by ``config.task``).
        resume: continue from ``checkpoint_last.pt``; without it an existing checkpoint is an error,
            so that a finished run is never overwritten by accident.
        time_limit_s: stop after the epoch during which this many seconds have passed (the run stays
            resumable with a larger ``epochs``).
        early_stopping: stop after this many validations without improvement of the task's score.
        callbacks: more callbacks, run after the built-in ones.

    Under torchrun the model is wrapped in DistributedDataParallel: each rank samples its own patches,
    gradients are averaged, validation metrics are averaged over ranks and rank 0 writes the files.
    """
    task = task or build_task(config)
    fold_dir = Path(fold_dir)
    last_path = fold_dir / "checkpoint_last.pt"
    if last_path.exists() and not resume:
        raise UserInputError("this fold already has a checkpoint.", path=last_path,
                             fix="add --resume to continue it, or choose a new run folder.")
    if distributed.is_main():
        fold_dir.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    device = distributed.init_from_environment(config.device) or select_device(config.device)
    # the same seed gives the same initial weights on every rank, and the same training (dropout and other torch
    # randomness; rank-specific after initialisation), without touching the caller's generator
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return _train_fold(train_cases, val_cases, plan, config, fold_dir, fold, task, device, resume, time_limit_s,
                           early_stopping, callbacks, console)


def _train_fold(train_cases: Sequence[PreprocessedCase], val_cases: Sequence[PreprocessedCase], plan: Plan,
                config: TrainConfig, fold_dir: Path, fold: int, task: Task, device: torch.device, resume: bool,
                time_limit_s: float | None, early_stopping: int | None, callbacks: Sequence[Callback],
                console: Console) -> FoldResult:
    """:func:`train_fold` inside its own random-number scope."""
    last_path = fold_dir / "checkpoint_last.pt"
    batch_size = config.batch_size or plan.batch_size
    torch.manual_seed(config.seed)
    model = task.build_model(plan, config).to(device)
    torch.manual_seed(config.seed + 1000 * distributed.rank() + 1)
    # fine-tuning: pretrained weights loaded now (not when resuming), parameter groups and schedule below
    finetuning = prepare_finetuning(model, config, fold_dir, load=not (resume and last_path.exists()),
                                    console=console)
    objective = task.objective(train_cases, plan, config).to(device)
    dataset = task.training_data(train_cases, plan, config, config.iterations_per_epoch * batch_size
                                 * distributed.world_size())
    workers = default_num_workers(device) if config.num_workers is None else config.num_workers
    network: torch.nn.Module = model
    if distributed.active():
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(finetuning.parameter_groups(objective) if finetuning else
                               [*model.parameters(), *objective.parameters()], config)
    checkpoint = Checkpoint(fold_dir, task.score_name, config.checkpoint_selection,
                            extra={"config": config.model_dump(), "plan": plan.model_dump(), "task": task.name})
    built_in: list[Callback] = [
        Validation(lambda m, cases: task.validate(m, cases, plan, config, device), val_cases, config.validate_every),
        checkpoint,
        FoldLog(fold_dir, task.score_name, console, header=(
            f"training {len(train_cases)} cases, validating {len(val_cases)}; patch "
            f"{config.patch_size or plan.patch_size} batch {batch_size}; device {device}; {workers} workers; "
            f"{distributed.world_size()} process(es)")),
    ]
    if time_limit_s is not None:
        built_in.append(TimeLimit(time_limit_s))
    if early_stopping is not None:
        built_in.append(EarlyStopping(task.score_name, early_stopping))
    if finetuning is not None:
        built_in.append(finetuning.schedule)
    trainer = Trainer(network, objective, optimizer, make_loader(dataset, batch_size, workers, device),
                      device=device, epochs=config.epochs, scheduler=make_scheduler(optimizer, config),
                      callbacks=[*built_in, *callbacks], grad_clip=config.grad_clip, amp=config.amp,
                      threads=cpu_threads_for_model(device, workers))
    if resume and last_path.exists():
        trainer.load_state_dict(load_checkpoint(last_path, map_location=device))
    started = time.perf_counter()
    state = trainer.fit()
    distributed.barrier()
    if checkpoint.best_path.exists():
        unwrap(model).load_state_dict(load_checkpoint(checkpoint.best_path, map_location=device)["model"])
    if distributed.is_main():
        task_state = task.finish(model, train_cases, val_cases, plan, config, device, fold, fold_dir)
        write_json(fold_dir / "task_state.json", task_state)
        write_json(fold_dir / "summary.json", {"score_name": task.score_name, "best_score": checkpoint.best_score,
                                               "best_epoch": checkpoint.best_epoch, "epochs_run": state.epoch,
                                               "stop_reason": state.stop_reason,
                                               "seconds": time.perf_counter() - started})
    distributed.barrier()
    return FoldResult(fold_dir=fold_dir, score_name=task.score_name, best_score=checkpoint.best_score,
                      best_epoch=checkpoint.best_epoch, epochs_run=state.epoch, history=state.history)
