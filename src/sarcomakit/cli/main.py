"""Entry point of the ``sarcomakit`` command: assembles the command groups and turns user errors into one line."""

from __future__ import annotations

import importlib
import logging
import os
import sys

import typer
from rich.console import Console

from sarcomakit.errors import UserInputError

app = typer.Typer(
    name="sarcomakit",
    help="Deep learning for soft-tissue sarcoma imaging: radiology volumes and whole-slide histopathology.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module holds one command group and exposes ``register(app)``.
COMMAND_MODULES = ("synth", "data", "planning", "training", "inference", "evaluation", "demo", "wsi")

for _name in COMMAND_MODULES:
    importlib.import_module(f"sarcomakit.cli.{_name}").register(app)


def run() -> None:
    """Console-script entry: run the app, printing user errors as one message with exit status 2."""
    logging.basicConfig(level=os.environ.get("SARCOMAKIT_LOG", "WARNING"), format="%(levelname)s %(message)s")
    try:
        app(standalone_mode=False)
    except UserInputError as exc:
        Console(stderr=True).print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        Console(stderr=True).print("interrupted; completed outputs are kept, rerun to resume.")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors come here too
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    run()
