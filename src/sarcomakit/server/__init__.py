"""Annotation server: MONAI Label's REST API over the interactive engine, and a browser app (NiiVue).

``create_app(studies_dir, model)`` builds the FastAPI application; ``sarcomakit serve`` runs it with uvicorn.
The engine (:mod:`sarcomakit.interactive`) knows nothing of the server; this package only adapts it to
HTTP: datastore, authentication, request limits, sessions, background fine-tuning.
"""

from sarcomakit.server.app import create_app

__all__ = ["create_app"]
