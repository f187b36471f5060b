"""The annotation server: MONAI Label's REST API over the interactive engine, and the browser app at ``/``.

:func:`create_app` builds a FastAPI application that answers the part of MONAI Label's API its clients
use (3D Slicer's MONAI Label module, ``monailabel.client.MONAILabelClient``), with MONAI Label's paths,
query parameters, multipart field names and response shapes:

=========================================  ==========  ==========================================================
path                                       role        what
=========================================  ==========  ==========================================================
``GET /info/``                             annotator   name, version, labels, models, strategies, trainers
``GET /datastore/?output=all|train``       annotator   the datastore (objects by id), or the totals
``PUT /datastore/?image=ID``               annotator   upload an image (multipart ``file`` and ``params``)
``GET /datastore/image?image=ID``          annotator   download an image
``PUT /datastore/label?image=ID&tag=T``    annotator   save a label (multipart ``label`` and ``params``)
``GET /datastore/label?label=ID&tag=T``    annotator   download a label
``DELETE /datastore/?id=ID``               admin       delete an image and its labels
``DELETE /datastore/label?id=ID&tag=T``    admin       delete a label
``POST /infer/{model}?image=ID``           annotator   predict from ``foreground``/``background`` points and an
                                                       optional ``label`` map; multipart answer (``params`` JSON,
                                                       mask as NIfTI on the stored image's grid)
``PUT /session/``, ``GET|DELETE            annotator   an image held in memory for repeated inference
/session/{id}``
``POST /activelearning/{strategy}``        annotator   the next image to annotate
``POST /train/[{model}]``, ``DELETE``      admin       start / stop fine-tuning on the final labels
``GET /train/``                            annotator   training status
``GET /auth/``, ``POST /auth/token``       anyone      MONAI Label's login flow (the password is the token)
=========================================  ==========  ==========================================================

Errors are JSON ``{"detail": message}``: 400 for invalid input (bad ids, prompts outside the image,
corrupt files), 401 without a valid token, 403 without the role, 404 for unknown images, labels and
sessions, 413 for a body over the upload limit, 415 for an unsupported file type, 429 when a training runs.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from fastapi import Body, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

import sarcomakit
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import read_image
from sarcomakit.interactive.protocol import InteractiveModel
from sarcomakit.server.auth import LOCAL_ADMIN, TokenAuth, User, bearer_token
from sarcomakit.server.datastore import FINAL_TAG, Datastore, check_id, read_upload, upload_suffix
from sarcomakit.server.engine import (
    BACKGROUND_SCRIBBLE,
    FOREGROUND_SCRIBBLE,
    LABEL_VALUE,
    ImageSession,
    InferenceEngine,
    check_label_grid,
    label_map_prompts,
    points_to_prompts,
)
from sarcomakit.server.limits import BodySizeLimit
from sarcomakit.server.multipart import encode_multipart
from sarcomakit.server.training import TrainManager

#: Active-learning strategies the server offers (MONAI Label's names).
STRATEGIES = {"random": "a random unlabelled image", "first": "the first unlabelled image by id"}
LABEL_NAME = "tumour"


def static_dir() -> Path:
    """The browser app's files shipped with the package."""
    return Path(str(resources.files("sarcomakit.server") / "static"))


def create_app(studies_dir: str | Path, model: str | Path | InteractiveModel = "default", *,
               token_file: str | Path | None = None, model_name: str = "sarcomakit", workers: int = 2,
               max_upload_mb: float = 1024.0, session_ttl_s: float = 1800.0, max_sessions: int = 16,
               device: str = "cpu") -> FastAPI:
    """The annotation server for the datastore ``studies_dir`` and the interactive ``model``.

    Args:
        studies_dir: the datastore folder (created when missing); see :mod:`sarcomakit.server.datastore`.
        model: ``default`` (the shipped network), ``random_walker``, ``geodesic``, a run folder of
            ``sarcomakit interactive train``, or a model object.
        token_file: tokens and roles (see :mod:`sarcomakit.server.auth`); None leaves the server open.
        model_name: the name clients infer with (``/infer/{model_name}``; ``{model_name}_scribbles`` is the
            same model declared as a scribbles model, for Slicer's scribbles tools).
        workers: inference threads.
        max_upload_mb: the largest request body accepted (413 above).
        session_ttl_s: seconds an unused image session stays in memory.
        max_sessions: image sessions kept at most.
        device: where a network runs.
    """
    store = Datastore(studies_dir)
    auth = TokenAuth.from_file(token_file) if token_file is not None else None
    engine = InferenceEngine(model, name=model_name, workers=workers, session_ttl_s=session_ttl_s,
                             max_sessions=max_sessions, device=device)
    trainer = TrainManager(store.root, on_done=engine.swap_model)
    model_names = {model_name: "deepedit", f"{model_name}_scribbles": "scribbles"}

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        yield
        trainer.stop()
        engine.close()

    app = FastAPI(title="sarcomakit annotation server", version=sarcomakit.__version__, lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=int(max_upload_mb * 2**20))
    app.state.datastore, app.state.engine, app.state.trainer = store, engine, trainer

    @app.exception_handler(UserInputError)
    async def user_error(_request: Request, error: UserInputError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    # ------------------------------------------------------------------ auth
    def current_user(request: Request) -> User:
        if auth is None:
            return LOCAL_ADMIN
        token = bearer_token(request.headers.get("authorization"))
        user = auth.user(token) if token else None
        if user is None:
            raise HTTPException(401, "a valid token is required: send 'Authorization: Bearer TOKEN'.",
                                headers={"WWW-Authenticate": "Bearer"})
        return user

    def role(name: str) -> Any:
        def check(user: User = Depends(current_user)) -> User:
            if not user.may(name):
                raise HTTPException(403, f"user '{user.name}' ({user.role}) may not do this: it needs the {name} role.")
            return user
        return Depends(check)

    annotator, admin = role("annotator"), role("admin")

    @app.get("/auth/")
    def auth_info() -> dict[str, Any]:
        return {"enabled": auth is not None, "client_id": "sarcomakit", "realm-uri": "", "username": "",
                "password": ""}

    @app.post("/auth/token")
    def auth_token(username: str = Form(""), password: str = Form("")) -> dict[str, str]:
        if auth is None:
            return {"access_token": "", "token_type": "Bearer"}
        token = auth.login(username, password)
        if token is None:
            raise HTTPException(401, "unknown user name or token.", headers={"WWW-Authenticate": "Bearer"})
        return {"access_token": token, "token_type": "Bearer"}

    @app.get("/auth/token/valid")
    def auth_valid(_user: User = annotator) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------ info
    @app.get("/info/")
    def info(_user: User = annotator) -> dict[str, Any]:
        described = engine.describe()
        labels = {LABEL_NAME: LABEL_VALUE}
        scribble_config = {"foreground_scribbles": FOREGROUND_SCRIBBLE, "background_scribbles": BACKGROUND_SCRIBBLE}
        models = {name: {"type": kind, "labels": labels, "dimension": 3,
                         "description": f"sarcomakit interactive model '{described['spec']}' "
                                        f"({'points' if kind == 'deepedit' else 'scribbles'})",
                         "config": {"label_values": scribble_config}, "model": described}
                  for name, kind in model_names.items()}
        trainers = {model_name: {"description": "fine-tune the interactive network on the final labels",
                                 "config": {"max_steps": 50, "learning_rate": 2e-4}}} if engine.trainable else {}
        return {"name": "sarcomakit", "description": "sarcomakit annotation server (MONAI Label API)",
                "version": sarcomakit.__version__, "labels": [LABEL_NAME], "models": models,
                "trainers": trainers, "strategies": {k: {"description": v} for k, v in STRATEGIES.items()},
                "scoring": {}, "train_stats": {}, "datastore": store.summary(),
                "scribbles": scribble_config}

    # ------------------------------------------------------------------ datastore
    @app.get("/datastore/")
    def datastore(output: str | None = None, _user: User = annotator) -> Any:
        if output == "all":
            return store.to_json()
        if output == "train":
            return store.datalist()
        return store.summary()

    def save_upload(upload: UploadFile, suffix: str, folder: str) -> Path:
        path = Path(folder) / f"upload{suffix}"
        with path.open("wb") as handle:
            while chunk := upload.file.read(2**20):
                handle.write(chunk)
        return path

    def checked_suffix(filename: str | None) -> str:
        try:
            return upload_suffix(filename or "")
        except UserInputError as error:
            raise HTTPException(415, str(error)) from error

    @app.put("/datastore/")
    @app.put("/datastore/image")
    def add_image(image: str = "", params: str = Form("{}"), file: UploadFile = File(...),
                  user: User = annotator) -> dict[str, Any]:
        suffix = checked_suffix(file.filename)
        _json_params(params)
        image_id = check_id(image) if image else None
        with tempfile.TemporaryDirectory(prefix="sarcomakit-upload-") as folder:
            saved = store.add_image(save_upload(file, suffix, folder), file.filename or "image.nii.gz", image_id,
                                    user=user.name)
        return {"image": saved}

    @app.delete("/datastore/")
    @app.delete("/datastore/image")
    def remove_image(id: str, _user: User = admin) -> dict[str, Any]:
        try:
            store.remove_image(check_id(id))
        except KeyError:
            raise HTTPException(404, f"no image '{id}'.") from None
        return {}

    @app.api_route("/datastore/image", methods=["GET", "HEAD"])
    def download_image(image: str, _user: User = annotator) -> FileResponse:
        try:
            path = store.image_path(check_id(image))
        except KeyError:
            raise HTTPException(404, f"no image '{image}'.") from None
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    @app.put("/datastore/label")
    def save_label(image: str, tag: str = FINAL_TAG, params: str = Form("{}"), label: UploadFile = File(...),
                   user: User = annotator) -> dict[str, Any]:
        check_id(image)
        tag = check_id(tag or FINAL_TAG, "tag")
        suffix = checked_suffix(label.filename)
        extra = _json_params(params)
        if not store.has_image(image):
            raise HTTPException(404, f"no image '{image}'.")
        with tempfile.TemporaryDirectory(prefix="sarcomakit-upload-") as folder:
            mask = read_upload(save_upload(label, suffix, folder), suffix)
        saved = store.save_label(image, mask, tag, user=user.name, params=extra)
        return {"image": image, "label": image, "tag": tag, "version": saved.version}

    @app.api_route("/datastore/label", methods=["GET", "HEAD"])
    def download_label(label: str, tag: str = FINAL_TAG, _user: User = annotator) -> FileResponse:
        try:
            path = store.label_path(check_id(label), check_id(tag, "tag"))
        except KeyError:
            raise HTTPException(404, f"no '{tag}' label for '{label}'.") from None
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    @app.get("/datastore/label/versions")
    def label_versions(label: str, tag: str = FINAL_TAG, _user: User = annotator) -> list[dict[str, Any]]:
        return [{"tag": v.tag, "version": v.version} for v in store.label_versions(check_id(label), tag)]

    @app.delete("/datastore/label")
    def remove_label(id: str, tag: str = FINAL_TAG, _user: User = admin) -> dict[str, Any]:
        try:
            store.remove_label(check_id(id), check_id(tag, "tag"))
        except KeyError:
            raise HTTPException(404, f"no '{tag}' label for '{id}'.") from None
        return {}

    # ------------------------------------------------------------------ sessions
    @app.put("/session/")
    def create_session(expiry: int = 0, uncompress: bool = False, files: list[UploadFile] = File(...),
                       _user: User = annotator) -> dict[str, Any]:
        if len(files) != 1:
            raise HTTPException(400, "send one image file per session (a zipped DICOM series counts as one).")
        suffix = checked_suffix(files[0].filename)
        with tempfile.TemporaryDirectory(prefix="sarcomakit-upload-") as folder:
            image = read_upload(save_upload(files[0], suffix, folder), suffix)
        entry = engine.create_session(image, files[0].filename or "image", float(expiry) if expiry > 0 else None)
        return {"session_id": entry.session_id, "session_info": entry.to_json()}

    @app.get("/session/{session_id}")
    def get_session(session_id: str, _user: User = annotator) -> dict[str, Any]:
        entry = engine.get_session(session_id)
        if entry is None:
            raise HTTPException(404, f"session ({session_id}) not found or expired.")
        return entry.to_json()

    @app.delete("/session/{session_id}")
    def remove_session(session_id: str, _user: User = annotator) -> dict[str, Any]:
        entry = engine.remove_session(session_id)
        if entry is None:
            raise HTTPException(404, f"session ({session_id}) not found or expired.")
        return entry.to_json()

    # ------------------------------------------------------------------ inference
    @app.post("/infer/{model}")
    async def infer(model: str, image: str = "", session_id: str = "", output: str | None = None,
                    params: str = Form("{}"), label: UploadFile | None = File(None),
                    file: UploadFile | None = File(None), _user: User = annotator) -> Response:
        received = time.perf_counter()
        if model not in model_names:
            raise HTTPException(404, f"no model '{model}'; this server has {', '.join(model_names)}.")
        request = _json_params(params)
        entry = engine.get_session(session_id) if session_id else None
        if entry is None and file is not None and file.filename:
            suffix = checked_suffix(file.filename)
            content = await file.read()
            entry = await engine.run(lambda: _transient_session(engine, content, suffix, file.filename or "image"))
        if entry is None:
            if not image:
                raise HTTPException(404 if session_id else 400,
                                    f"session ({session_id}) not found or expired; give image=ID." if session_id
                                    else "give image=ID, session_id or an image file.")
            check_id(image)
            try:
                path = store.image_path(image)
            except KeyError:
                raise HTTPException(404, f"no image '{image}'.") from None
            entry = await engine.run(lambda: engine.image_session(image, path, lambda: store.read_image(image)))
        label_bytes = await label.read() if label is not None and label.filename else None
        label_suffix = checked_suffix(label.filename) if label_bytes is not None and label else None
        result = await engine.run(lambda: _infer(engine, entry, request, label_bytes, label_suffix))
        mask_bytes = await engine.run(lambda: _nifti_bytes(result.image))
        elapsed = time.perf_counter() - received
        answer = {"model": model, "image": image or entry.session_id, "session_id": session_id or None,
                  "label_names": {LABEL_NAME: LABEL_VALUE}, "prompts": result.n_prompts,
                  "voxels": int(result.mask.sum()),
                  "latencies": {"model": round(result.model_latency_s, 4), "infer": round(result.total_latency_s, 4),
                                "total": round(elapsed, 4)}}
        headers = {"X-Latency-Model-Ms": f"{1000 * result.model_latency_s:.1f}",
                   "X-Latency-Total-Ms": f"{1000 * elapsed:.1f}", "X-Mask-Voxels": str(answer["voxels"]),
                   "Access-Control-Expose-Headers": "X-Latency-Model-Ms, X-Latency-Total-Ms, X-Mask-Voxels"}
        if output == "json":
            return JSONResponse(answer, headers=headers)
        filename = f"{image or 'session'}_{model}.nii.gz"
        if output == "image":
            return Response(mask_bytes, media_type="application/octet-stream", headers={
                **headers, "Content-Disposition": f'attachment; filename="{filename}"'})
        body, content_type = encode_multipart(answer, filename, mask_bytes)
        return Response(body, media_type=content_type, headers=headers)

    # ------------------------------------------------------------------ active learning
    @app.post("/activelearning/{strategy}")
    def next_sample(strategy: str, params: dict[str, Any] | None = Body(None),
                    user: User = annotator) -> dict[str, Any]:
        if strategy not in STRATEGIES:
            raise HTTPException(404, f"no strategy '{strategy}'; choose among {', '.join(STRATEGIES)}.")
        pool = store.unlabelled_ids()
        if not pool:
            return {}
        # an image another annotator picked in the last minutes goes last, so two annotators get different images
        recent = time.time() - 300
        fresh = [i for i in pool if store.info(i).get("picked", {}).get("ts", 0) < recent] or pool
        chosen = fresh[0] if strategy == "first" else random.choice(fresh)
        client = (params or {}).get("client_id") or user.name
        info = store.update_info(chosen, {"picked": {"ts": time.time(), "strategy": strategy, "client_id": client}})
        return {"id": chosen, "image": chosen, "status": store.status(chosen), "path": str(store.image_path(chosen)),
                "strategy": strategy, "info": info}

    # ------------------------------------------------------------------ training
    @app.get("/train/")
    def train_status(all: bool = False, check_if_running: bool = False, _user: User = annotator) -> Any:
        if check_if_running and not trainer.running():
            raise HTTPException(404, "no training is running.")
        status = trainer.status(all)
        if status is None:
            raise HTTPException(404, "no training has run yet.")
        return status

    def start_training(params: dict[str, Any] | None) -> dict[str, Any]:
        if not engine.trainable:
            raise HTTPException(400, f"the model '{engine.spec}' has no weights to fine-tune.",)
        if not store.labelled_ids():
            raise HTTPException(400, "no final label yet: save some labels first.")
        settings = dict(params or {})
        settings.update(settings.pop(model_name, {}) if isinstance(settings.get(model_name), dict) else {})
        task = trainer.start(engine.spec, {k: v for k, v in settings.items()
                                           if k in ("max_steps", "learning_rate", "device")})
        if task is None:
            raise HTTPException(429, "a training is already running.")
        return task

    @app.post("/train/")
    def train(params: dict[str, Any] | None = Body(None), _user: User = admin) -> dict[str, Any]:
        return {model_name: start_training(params)}

    @app.post("/train/{model}")
    def train_model(model: str, params: dict[str, Any] | None = Body(None), _user: User = admin) -> dict[str, Any]:
        if model != model_name:
            raise HTTPException(404, f"no trainer '{model}'; this server has {model_name}.")
        return start_training(params)

    @app.delete("/train/")
    def train_stop(_user: User = admin) -> dict[str, Any]:
        return trainer.stop()

    # ------------------------------------------------------------------ browser app
    static = static_dir()

    @app.get("/", response_class=HTMLResponse)
    def index() -> Any:
        page = static / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse("<h1>sarcomakit annotation server</h1><p>The browser app is not installed; "
                            "the MONAI Label API is at <a href='/info/'>/info/</a>.</p>")

    if static.is_dir():
        app.mount("/static", StaticFiles(directory=static), name="static")
    return app


def _json_params(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError as error:
        raise UserInputError(f"params is not valid JSON: {error}.") from error
    if not isinstance(value, dict):
        raise UserInputError("params must be a JSON object.")
    return value


def _transient_session(engine: InferenceEngine, content: bytes, suffix: str, name: str) -> ImageSession:
    with tempfile.TemporaryDirectory(prefix="sarcomakit-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(content)
        image = read_upload(path, suffix)
    entry = engine.create_session(image, name, 60.0)
    engine.remove_session(entry.session_id)  # used for this request only
    return entry


def _infer(engine: InferenceEngine, entry: ImageSession, request: dict[str, Any], label_bytes: bytes | None,
           label_suffix: str | None) -> Any:
    shape = entry.session.shape
    prompts = points_to_prompts(request.get("foreground"), True, shape)
    prompts += points_to_prompts(request.get("background"), False, shape)
    previous = None
    if label_bytes is not None and label_suffix is not None:
        with tempfile.TemporaryDirectory(prefix="sarcomakit-label-") as folder:
            path = Path(folder) / f"label{label_suffix}"
            path.write_bytes(label_bytes)
            label_image = read_upload(path, label_suffix)
        scribbles, previous = label_map_prompts(check_label_grid(label_image, entry.image), request)
        prompts += scribbles
    return engine.segment(entry, prompts, previous)


def _nifti_bytes(image: sitk.Image) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sarcomakit-mask-") as folder:
        path = Path(folder) / "mask.nii.gz"
        sitk.WriteImage(image, str(path), True)
        return path.read_bytes()


def read_mask(content: bytes) -> np.ndarray:
    """A NIfTI mask's bytes (as ``/infer`` answers) as a boolean array ``(z, y, x)``; for clients and tests."""
    with tempfile.TemporaryDirectory(prefix="sarcomakit-mask-") as folder:
        path = Path(folder) / "mask.nii.gz"
        path.write_bytes(content)
        return sitk.GetArrayFromImage(read_image(path)) > 0
