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
from monai.losses import DiceCELoss
from monai.utils import set_determinism
from rich.console import Console

from sarcomakit.cohort_runner import progress_bar
from sarcomakit.errors import UserInputError
from sarcomakit.inference.sliding_window import predict_volume
from sarcomakit.io.atomic import write_json, write_text
from sarcomakit.models import build_network
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.training.checkpoint import load_checkpoint, save_checkpoint
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.patches import CaseVolume, PatchDataset

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """Outcome of one fold's training."""

    fold_dir: Path
    best_dice: float
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


def default_num_workers() -> int:
    """Data-loading processes: leave a core for the training process, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def poly_learning_rate(initial: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """nnU-Net's poly schedule: ``initial * (1 - epoch / epochs) ** exponent``."""
    return initial * (1 - epoch / epochs) ** exponent


def build_model(plan: Plan, config: TrainConfig) -> torch.nn.Module:
    return build_network(config.network, in_channels=len(plan.channels), out_channels=len(plan.labels),
                         patch_size=config.patch_size or plan.patch_size, **config.network_options)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                               nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def validation_dice(model: torch.nn.Module, cases: Sequence[PreprocessedCase], patch_size: Sequence[int],
                    n_classes: int, device: torch.device, config: TrainConfig) -> float:
    """Mean Dice over foreground classes and cases, in the preprocessed space (a fast proxy)."""
    model.eval()
    scores = []
    for case in cases:
        # copy: cached cases may be read-only memory maps
        volume = torch.from_numpy(np.array(case.data, dtype=np.float32)).to(device)
        probs = predict_volume(model, volume, patch_size, overlap=config.sw_overlap,
                               sw_batch_size=config.sw_batch_size, amp=config.amp)
        prediction = probs.argmax(0).cpu().numpy()
        for k in range(1, n_classes):
            ref = case.label == k
            pred = prediction == k
            denom = ref.sum() + pred.sum()
            scores.append(1.0 if denom == 0 else 2.0 * np.logical_and(ref, pred).sum() / denom)
    return float(np.mean(scores)) if scores else float("nan")


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
        writer = csv.DictWriter(buffer, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
        write_text(self.history_path, buffer.getvalue())

    def close(self) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


def train_fold(train_cases: Sequence[PreprocessedCase], val_cases: Sequence[PreprocessedCase], plan: Plan,
               config: TrainConfig, fold_dir: str | Path, *, resume: bool = False,
               time_limit_s: float | None = None, console: Console | None = None) -> FoldResult:
    """Train one fold and keep its best and last checkpoints in ``fold_dir``.

    Args:
        train_cases, val_cases: preprocessed cases (with labels) of this fold.
        plan: the plan they were preprocessed with (saved into the checkpoints).
        config: resolved training configuration.
        resume: continue from ``checkpoint_last.pt``; without it an existing checkpoint is an error,
            so that a finished run is never overwritten by accident.
        time_limit_s: stop after the epoch during which this many seconds have passed (the run stays
            resumable with a larger ``epochs``).
    """
    fold_dir = Path(fold_dir)
    last_path, best_path = fold_dir / "checkpoint_last.pt", fold_dir / "checkpoint_best.pt"
    if last_path.exists() and not resume:
        raise UserInputError("this fold already has a checkpoint.", path=last_path,
                             fix="add --resume to continue it, or choose a new run folder.")
    fold_dir.mkdir(parents=True, exist_ok=True)
    console = console or Console(stderr=True)
    device = select_device(config.device)
    set_determinism(seed=config.seed)
    patch_size = tuple(config.patch_size or plan.patch_size)
    batch_size = config.batch_size or plan.batch_size
    model = build_model(plan, config).to(device)
    optimizer = _optimizer(model, config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                         smooth_nr=1e-5, smooth_dr=1e-5)

    start_epoch, best_dice, best_epoch, history = 0, -math.inf, -1, []
    if resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch = state["epoch"] + 1
        best_dice, best_epoch, history = state["best_dice"], state["best_epoch"], list(state["history"])

    volumes = [CaseVolume(c, seed=config.seed + i) for i, c in enumerate(train_cases)]
    dataset = PatchDataset(volumes, patch_size, config.iterations_per_epoch * batch_size,
                           foreground_fraction=config.foreground_fraction, augmentation=config.augmentation,
                           seed=config.seed)
    workers = default_num_workers() if config.num_workers is None else config.num_workers
    n_classes = len(plan.labels)
    flog = _FoldLog(fold_dir)
    flog.info("training %d cases, validating %d; patch %s batch %d; device %s; %d workers",
              len(train_cases), len(val_cases), patch_size, batch_size, device, workers)
    started = time.perf_counter()
    epoch = start_epoch - 1
    try:
        with progress_bar(console) as progress:
            task = progress.add_task(f"training {fold_dir.name}", total=config.epochs, completed=start_epoch,
                                     status="")
            for epoch in range(start_epoch, config.epochs):
                lr = poly_learning_rate(config.learning_rate, epoch, config.epochs, config.poly_exponent)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                dataset.set_epoch(epoch)
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                    pin_memory=device.type == "cuda", worker_init_fn=_worker_init,
                    persistent_workers=False, prefetch_factor=4 if workers else None)
                model.train()
                losses, waited, epoch_start = [], 0.0, time.perf_counter()
                fetch_start = time.perf_counter()
                for batch in loader:
                    waited += time.perf_counter() - fetch_start
                    image = batch["image"].to(device, non_blocking=True)
                    label = batch["label"].to(device, non_blocking=True)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device_type=device.type, enabled=use_amp):
                        loss = loss_fn(model(image), label)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    losses.append(float(loss.detach()))
                    fetch_start = time.perf_counter()
                train_time = time.perf_counter() - epoch_start
                record = {"epoch": epoch, "lr": lr, "train_loss": float(np.mean(losses)),
                          "epoch_seconds": train_time, "data_wait_fraction": waited / max(train_time, 1e-9)}
                if val_cases and (epoch % config.validate_every == 0 or epoch == config.epochs - 1):
                    record["val_dice"] = validation_dice(model, val_cases, patch_size, n_classes, device, config)
                else:
                    record["val_dice"] = float("nan")
                history.append(record)
                improved = not math.isnan(record["val_dice"]) and record["val_dice"] > best_dice
                if improved or (not val_cases):
                    best_dice = record["val_dice"] if improved else best_dice
                    best_epoch = epoch
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "epoch": epoch, "best_dice": best_dice,
                         "best_epoch": best_epoch, "history": history, "config": config.model_dump(),
                         "plan": plan.model_dump()}
                if improved or not val_cases:
                    save_checkpoint(best_path, state)
                save_checkpoint(last_path, state)
                flog.write_history(history)
                flog.info("epoch %d lr %.2e loss %.4f val_dice %.4f data_wait %.1f%% (%.1fs)", epoch, lr,
                          record["train_loss"], record["val_dice"], 100 * record["data_wait_fraction"], train_time)
                progress.update(task, advance=1, status=f"loss {record['train_loss']:.3f} "
                                f"val Dice {record['val_dice']:.3f} (best {max(best_dice, 0):.3f})")
                if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
                    flog.info("time limit reached after epoch %d", epoch)
                    break
    finally:
        flog.close()
    write_json(fold_dir / "summary.json", {"best_val_dice": best_dice, "best_epoch": best_epoch,
                                           "epochs_run": epoch + 1, "seconds": time.perf_counter() - started})
    return FoldResult(fold_dir=fold_dir, best_dice=best_dice, best_epoch=best_epoch, epochs_run=epoch + 1,
                      history=history)
