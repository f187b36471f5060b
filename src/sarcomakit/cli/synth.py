"""CLI commands of the synth group (filled in with the library that backs them)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""
