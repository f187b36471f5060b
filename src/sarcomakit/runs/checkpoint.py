"""Checkpoints: everything to resume training or to predict, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save ``state`` (model/optimizer state dicts, epoch, metrics, config) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights and plain Python values only)."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError("checkpoint not found.", path=p, fix="train first, or point at a run folder with fold_*/.")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise UserInputError(f"checkpoint cannot be read ({type(exc).__name__}).", path=p,
                             fix="delete it to restart from an earlier checkpoint, or retrain.") from exc
