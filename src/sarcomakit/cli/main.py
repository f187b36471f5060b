"""Entry point of the ``sarcomakit`` command: assembles the command groups and turns user errors into one line."""

from __future__ import annotations

import importlib
import logging
import os
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from sarcomakit.core.cohort_runner import CohortFailed
from sarcomakit.core.errors import UserInputError

if TYPE_CHECKING:
    # typer ships its own copy of click (no ``click`` distribution is installed); TyperGroup.invoke takes its Context
    from typer._click import Context


class _UserErrorGroup(TyperGroup):
    """Top-level group that prints a :class:`UserInputError` as one message and exits with status 2.

    A :class:`CohortFailed` (items failed after all were tried, so a cohort-level output such as a
    plan could not be made) prints its failures, one line each, and exits with status 1, the status
    of every cohort command with failed items (:attr:`CohortResult.exit_code`).

    Catching here (rather than around ``app()``) makes the CLI behave the same when it is
    invoked by the console script, ``python -m sarcomakit`` or a test's ``CliRunner``.
    """

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserInputError as exc:
            Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(str(exc))}",
                                                       highlight=False)
            raise typer.Exit(exc.result.exit_code if isinstance(exc, CohortFailed) else 2) from None
        except KeyboardInterrupt:
            Console(stderr=True).print("interrupted; completed outputs are kept, rerun the command to resume.")
            raise typer.Exit(130) from None


app = typer.Typer(
    name="sarcomakit",
    cls=_UserErrorGroup,
    help="Deep learning for soft-tissue sarcoma imaging: radiology volumes and whole-slide histopathology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debugging detail.")) -> None:
    level = "DEBUG" if verbose else os.environ.get("SARCOMAKIT_LOG", "WARNING")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# Each module holds one command group and exposes ``register(app)``.
COMMAND_MODULES = ("synth", "data", "planning", "training", "pretrain", "inference", "evaluation", "experiment",
                   "report", "demo", "wsi", "interactive", "serve", "federated", "export")

for _name in COMMAND_MODULES:
    importlib.import_module(f"sarcomakit.cli.{_name}").register(app)


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
