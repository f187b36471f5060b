"""Parsing of the options several commands share (which folds and checkpoint of a run to use)."""

from __future__ import annotations

from sarcomakit.core.errors import UserInputError


def folds_and_checkpoint(folds: str, checkpoint: str) -> list[int] | None:
    """``--folds`` ('all' -> None, or a comma list of fold numbers) after checking ``--checkpoint`` (best or
    last); either wrong is a one-line user error."""
    if checkpoint not in ("best", "last"):
        raise UserInputError(f"unknown checkpoint '{checkpoint}'.", fix="use --checkpoint best or last.")
    if folds == "all":
        return None
    try:
        return [int(f) for f in folds.split(",")]
    except ValueError:
        raise UserInputError(f"--folds '{folds}' is not 'all' or a comma list of fold numbers.",
                             fix="write e.g. --folds 0 or --folds 0,1,2.") from None
