"""Run one function over many cases so that one bad case never sinks the cohort.

Each failure is recorded (case, message) and reported in a summary at the end; the others finish.

Exit status of every cohort command (:attr:`CohortResult.exit_code`): 0 when every item succeeded or
was already done, 1 when any item failed (after the others finished), 2 for a user error found
before any work (:class:`~sarcomakit.core.errors.UserInputError`). A step that needs every item to
produce its output (a fingerprint, a plan) raises :class:`CohortFailed` after trying them all; the CLI
prints its failures and exits 1 as well.

Progress shows as a live bar in a terminal (or notebook). Elsewhere (CI logs, ``nohup``, a pipe) a
live bar prints nothing until the end, so plain lines are printed instead, at most one every
:data:`PLAIN_PROGRESS_SECONDS` and one when the work ends:
``preprocess: 12/40, 1m20s elapsed, ~3m left``.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sarcomakit.core.errors import SarcomakitError, UserInputError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("sarcomakit")

#: Least time between two plain progress lines when the output is not a terminal.
PLAIN_PROGRESS_SECONDS = 30.0


@dataclass
class CohortResult(Generic[R]):
    """Results by item name, failures by item name (message), and items skipped as already done."""

    results: dict[str, R] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """True when items failed and none succeeded or was already done."""
        return bool(self.failures) and not self.results and not self.skipped

    @property
    def exit_code(self) -> int:
        """The exit status of every cohort command: 0 when each item succeeded or was already done, 1 when any
        item failed (the others are finished first and the failures listed in the summary)."""
        return 1 if self.failures else 0

    def print_summary(self, console: Console | None = None, what: str = "case") -> None:
        """One line of counts, then one line per failure (never wrapped, so that logs keep one line each)."""
        console = console or Console(stderr=True)
        done = len(self.results)
        console.print(f"{done} {what}(s) done, {len(self.skipped)} skipped (already done), "
                      f"{len(self.failures)} failed.", highlight=False)
        for name, message in self.failures.items():
            console.print(f"  [red]failed[/red] {escape(name)}: {escape(message)}", highlight=False, soft_wrap=True)


class CohortFailed(UserInputError):
    """A cohort-level output (a fingerprint, a plan) cannot be made because some items failed.

    Every item was tried; ``result`` says which failed and why, and the message lists them, one line
    each, under ``message``. The CLI prints it and exits with ``result.exit_code`` (1). It is a
    :class:`UserInputError` so that callers catching user errors keep working.
    """

    def __init__(self, result: CohortResult, message: str, *, path: str | Path | None = None) -> None:
        lines = [f"  failed {name}: {reason}" for name, reason in result.failures.items()]
        super().__init__("\n".join([message, *lines]), path=path)
        self.result = result


class ProgressReporter(Protocol):
    """What the cohort loop tells the progress display."""

    def working_on(self, name: str) -> None: ...

    def advance(self, *, skipped: bool = False) -> None: ...


class _NoProgress:
    def working_on(self, name: str) -> None:
        pass

    def advance(self, *, skipped: bool = False) -> None:
        pass


class _BarProgress:
    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task

    def working_on(self, name: str) -> None:
        self.progress.update(self.task, status=name)

    def advance(self, *, skipped: bool = False) -> None:
        self.progress.advance(self.task)


class PlainProgress:
    """Progress as plain lines for logs: at most one every ``every_s`` seconds, and one at the end.

    The estimate of the time left counts only items that did work (items skipped as already done
    take no time), so a resumed run does not promise an early finish.
    """

    def __init__(self, console: Console, description: str, total: int, *, every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.console, self.description, self.total = console, description, total
        self.every_s, self.clock = every_s, clock
        self.done = self.skipped = 0
        self.started = self.last_line = clock()

    def working_on(self, name: str) -> None:
        pass

    def advance(self, *, skipped: bool = False) -> None:
        self.done += 1
        self.skipped += int(skipped)
        now = self.clock()
        if self.done >= self.total or now - self.last_line >= self.every_s:
            self.last_line = now
            self.console.print(self.line(now), highlight=False, markup=False, soft_wrap=True)

    def line(self, now: float) -> str:
        """E.g. ``predicting: 12/40, 1m20s elapsed, ~3m left`` (``... done in 4m10s`` at the end)."""
        elapsed = now - self.started
        text = f"{self.description}: {self.done}/{self.total}"
        if self.done >= self.total:
            return f"{text}, done in {_duration(elapsed)}"
        text += f", {_duration(elapsed)} elapsed"
        worked = self.done - self.skipped
        if worked:
            text += f", ~{_duration(elapsed / worked * (self.total - self.done), rough=True)} left"
        return text


def _duration(seconds: float, rough: bool = False) -> str:
    """``42s``, ``1m20s``, ``2h05m``; ``rough`` drops the seconds above a minute (an estimate)."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m" if rough else f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def progress_bar(console: Console | None = None, transient: bool = False) -> Progress:
    """The progress bar used by every long sarcomakit command."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True), transient=transient,
    )


@contextlib.contextmanager
def cohort_progress(description: str, total: int, *, console: Console | None = None, show: bool = True,
                    transient: bool = False) -> Iterator[ProgressReporter]:
    """A live bar in a terminal or notebook, :class:`PlainProgress` lines elsewhere, nothing when not ``show``."""
    console = console or Console(stderr=True)
    if not show:
        yield _NoProgress()
    elif console.is_terminal or console.is_jupyter:
        with progress_bar(console, transient=transient) as progress:
            yield _BarProgress(progress, progress.add_task(description, total=total, status=""))
    else:
        yield PlainProgress(console, description, total, every_s=PLAIN_PROGRESS_SECONDS)


def run_per_case(items: Sequence[T] | Iterable[T], fn: Callable[[T], R], *, name: Callable[[T], str] = str,
                 description: str = "cases", is_done: Callable[[T], bool] | None = None,
                 console: Console | None = None, show_progress: bool = True) -> CohortResult[R]:
    """Apply ``fn`` to each item, catching and recording failures instead of stopping.

    Args:
        items: what to process (cases, slides, ...).
        fn: the work for one item; its return value is kept under the item's name.
        name: how an item is named in results and messages.
        description: the progress label.
        is_done: when given and true for an item, the item is skipped (resumable runs).
    """
    items = list(items)
    outcome: CohortResult[R] = CohortResult()
    with cohort_progress(description, len(items), console=console, show=show_progress) as progress:
        for item in items:
            key = name(item)
            progress.working_on(key)
            skipped = is_done is not None and is_done(item)
            if skipped:
                outcome.skipped.append(key)
            else:
                try:
                    outcome.results[key] = fn(item)
                except SarcomakitError as exc:
                    outcome.failures[key] = str(exc)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # one bad item must not stop the others; keep the trace in the log
                    outcome.failures[key] = f"{type(exc).__name__}: {exc}"
                    log.debug("failure on %s\n%s", key, traceback.format_exc())
            progress.advance(skipped=skipped)
    return outcome
