"""``sarcomakit serve``: the annotation server (MONAI Label's REST API and the browser app) over a studies folder.

A thin layer over :func:`sarcomakit.server.create_app` run by uvicorn. It binds to 127.0.0.1 unless
``--host`` says otherwise; give ``--token-file`` before opening it to a network.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def serve_command(
    studies: Path = typer.Option(Path("studies"), "--studies", help="Datastore folder: images, labels/<tag>/ "
                                                                     "(created when missing)."),
    model: str = typer.Option("default", "--model", help="Interactive model: default (shipped network), "
                                                         "random_walker, geodesic, or a run folder."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 opens it to the network)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port."),
    token_file: Path = typer.Option(None, "--token-file", help="Lines 'TOKEN ROLE [NAME]', ROLE annotator or admin; "
                                                               "without it the server is open."),
    name: str = typer.Option("sarcomakit", "--name", help="Model name clients infer with."),
    workers: int = typer.Option(2, "--workers", min=1, help="Inference threads."),
    max_upload_mb: float = typer.Option(1024.0, "--max-upload-mb", min=1, help="Largest upload accepted (MiB)."),
    session_ttl: float = typer.Option(1800.0, "--session-ttl", min=10, help="Seconds an unused image session "
                                                                            "stays in memory."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto."),
) -> None:
    """Serve interactive segmentation to 3D Slicer (MONAI Label module) and to the browser app at http://HOST:PORT/."""
    import uvicorn

    from sarcomakit.server import create_app

    app = create_app(studies, model, token_file=token_file, model_name=name, workers=workers,
                     max_upload_mb=max_upload_mb, session_ttl_s=session_ttl, device=device)
    if host not in ("127.0.0.1", "localhost", "::1") and token_file is None:
        Console(stderr=True).print(f"warning: serving on {host} without --token-file: anyone who reaches this "
                                   "machine can read and change the datastore.", highlight=False)
    Console(stderr=True).print(f"serving {studies} with model '{model}' at http://{host}:{port}/ "
                               f"(MONAI Label API; model name '{name}')", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    """Add ``serve``."""
    app.command("serve")(serve_command)
