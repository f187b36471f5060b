"""Errors that end a command with one clear message instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class SarcomakitError(Exception):
    """Base class of every error sarcomakit raises on purpose."""


class UserInputError(SarcomakitError):
    """A problem with what the user gave us (a path, a file, a manifest, an option).

    The CLI prints ``str(error)`` alone and exits with status 2. The message names the file
    and the fix, so that it can be acted on without reading code.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.fix = fix
        self.detail = message
        text = f"{path}: {message}" if path is not None else message
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)
