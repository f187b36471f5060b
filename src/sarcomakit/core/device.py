"""Choosing the torch device, and sharing a CPU between the model and data loading."""

from __future__ import annotations

import os

import torch

from sarcomakit.core.errors import UserInputError


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


def cpu_threads_for_model(device: torch.device, workers: int) -> int | None:
    """Threads the model should use on a CPU (the cores the loader processes leave), or None to leave torch's choice.

    An ``OMP_NUM_THREADS`` set by the user always wins. The caller applies the number with
    ``torch.set_num_threads`` for the duration of training only (see :class:`sarcomakit.training.trainer.Trainer`).
    """
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) - workers)
