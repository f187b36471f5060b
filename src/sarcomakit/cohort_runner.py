"""Run one function over many cases so that one bad case never sinks the cohort.

Each failure is recorded (case, message) and reported in a summary at the end; the others finish.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sarcomakit.errors import SarcomakitError

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("sarcomakit")


@dataclass
class CohortResult(Generic[R]):
    """Results by item name, failures by item name (message), and items skipped as already done."""

    results: dict[str, R] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """True when items failed and none succeeded or was already done (a command should exit non-zero)."""
        return bool(self.failures) and not self.results and not self.skipped

    @property
    def exit_code(self) -> int:
        """The exit status of every cohort command: 0 when each item succeeded or was already done, 1 when any
        item failed (the others are finished first and the failures listed in the summary)."""
        return 1 if self.failures else 0

    def print_summary(self, console: Console | None = None, what: str = "case") -> None:
        console = console or Console(stderr=True)
        done = len(self.results)
        console.print(f"{done} {what}(s) done, {len(self.skipped)} skipped (already done), "
                      f"{len(self.failures)} failed.")
        for name, message in self.failures.items():
            console.print(f"  [red]failed[/red] {name}: {message}", highlight=False, markup=True)


def progress_bar(console: Console | None = None, transient: bool = False) -> Progress:
    """The progress bar used by every long sarcomakit command."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True), transient=transient,
    )


def run_per_case(items: Sequence[T] | Iterable[T], fn: Callable[[T], R], *, name: Callable[[T], str] = str,
                 description: str = "cases", is_done: Callable[[T], bool] | None = None,
                 console: Console | None = None, show_progress: bool = True) -> CohortResult[R]:
    """Apply ``fn`` to each item, catching and recording failures instead of stopping.

    Args:
        items: what to process (cases, slides, ...).
        fn: the work for one item; its return value is kept under the item's name.
        name: how an item is named in results and messages.
        description: the progress bar's label.
        is_done: when given and true for an item, the item is skipped (resumable runs).
    """
    items = list(items)
    outcome: CohortResult[R] = CohortResult()
    with progress_bar(console) as progress:
        task = progress.add_task(description, total=len(items), status="", visible=show_progress)
        for item in items:
            key = name(item)
            progress.update(task, status=key)
            if is_done is not None and is_done(item):
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
            progress.advance(task)
    return outcome
