"""The server's inference engine: one interactive model, a worker pool, and expiring image sessions.

Each request of MONAI Label's clients carries every prompt of the interaction so far (Slicer resends all
its points and its whole scribble label map), so a request is answered statelessly: the prompts replace
whatever the image's session held (:meth:`InteractiveSession.replace`), the optional previous mask too,
and the model predicts. Sessions only save work: the image read from disk and the model's once-per-image
preparation (a network's resampling and normalisation) are kept in memory, keyed by the image (and its
file's modification time, so a replaced image is prepared again) or by an explicit ``/session/`` id.

Bounded memory: at most ``max_sessions`` sessions are kept, the least recently used dropped first, and a
session unused for ``session_ttl_s`` seconds expires. Predictions run in a thread pool of ``workers``
threads (torch, SciPy and scikit-image release the GIL in their heavy loops), so one slow request does
not block the others; requests on the same session are serialised by the session's lock.

Prompts arrive as ITK indices ``[i, j, k]`` (x, y, z) of the stored image, the order Slicer sends; the
engine reverses them to array order and groups the voxels of each axial slice into one scribble. A label
map may carry a previous mask (value 1) and scribbles (the foreground and background values the server
declares in ``/info/``, or those named ``foreground_scribbles`` / ``background_scribbles`` in the
request's ``label_info``, as Slicer sends them).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.models import load_interactive_model
from sarcomakit.interactive.prompts import Prompt, Scribble
from sarcomakit.interactive.protocol import InteractiveModel
from sarcomakit.interactive.session import InteractiveSession

T = TypeVar("T")
#: Values of a scribble label map (MONAI Label's defaults for one label: background 2, foreground 3).
LABEL_VALUE = 1
BACKGROUND_SCRIBBLE = 2
FOREGROUND_SCRIBBLE = 3


@dataclass
class ImageSession:
    """An image held in memory with an interactive session prepared for it."""

    session_id: str
    image: sitk.Image
    session: InteractiveSession
    model_version: int
    source: str
    expiry_s: float
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expired(self, now: float) -> bool:
        return now - self.last_used > self.expiry_s

    def to_json(self) -> dict[str, Any]:
        """MONAI Label's session info shape (plus the image's size)."""
        return {"name": self.session_id, "path": self.source, "image": self.source,
                "meta": {"size": list(self.image.GetSize()), "spacing": list(self.image.GetSpacing())},
                "create_ts": int(self.created), "last_access_ts": int(self.last_used), "expiry": int(self.expiry_s)}


@dataclass(frozen=True)
class InferResult:
    """A prediction: the mask on the image's grid and what it cost."""

    mask: np.ndarray
    image: sitk.Image
    model_latency_s: float
    total_latency_s: float
    n_prompts: int


def points_to_prompts(points: Any, positive: bool, shape: Sequence[int]) -> list[Prompt]:
    """Voxel indices ``[[i, j, k], ...]`` (ITK order) as one scribble per axial slice, in array order.

    Raises:
        UserInputError: not a list of three integers each, or a point outside the image.
    """
    if points is None or (isinstance(points, list) and not points):
        return []
    try:
        array = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        array = np.zeros((0, 0))
    if array.ndim != 2 or array.shape[1] != 3 or not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise UserInputError(f"{'foreground' if positive else 'background'} must be a list of voxel indices "
                             "[i, j, k] (integers, ITK order).")
    zyx = array[:, ::-1].astype(np.int64)
    outside = np.any((zyx < 0) | (zyx >= np.asarray(shape)), axis=1)
    if np.any(outside):
        i, j, k = (int(v) for v in array[np.argmax(outside)])
        raise UserInputError(f"the point [{i}, {j}, {k}] lies outside the image (size "
                             f"{list(reversed([int(s) for s in shape]))}, ITK order i, j, k).")
    return voxels_to_prompts(zyx, positive)


def voxels_to_prompts(zyx: np.ndarray, positive: bool) -> list[Prompt]:
    """``(N, 3)`` array-order voxels as one scribble per axial slice (sorted by slice)."""
    prompts: list[Prompt] = []
    for z in np.unique(zyx[:, 0]):
        prompts.append(Scribble.from_voxels(zyx[zyx[:, 0] == z], positive=positive, axis=0))
    return prompts


def scribble_values(params: dict[str, Any]) -> tuple[int, int]:
    """Foreground and background scribble values of a label map: from ``label_info`` when given, else defaults."""
    foreground, background = FOREGROUND_SCRIBBLE, BACKGROUND_SCRIBBLE
    for entry in params.get("label_info") or []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), int):
            if entry.get("name") == "foreground_scribbles":
                foreground = entry["id"]
            elif entry.get("name") == "background_scribbles":
                background = entry["id"]
    return foreground, background


def label_map_prompts(label: np.ndarray, params: dict[str, Any]) -> tuple[list[Prompt], np.ndarray | None]:
    """Scribbles and previous mask carried by a label map on the image grid (see the module docstring)."""
    foreground, background = scribble_values(params)
    prompts = voxels_to_prompts(np.argwhere(label == foreground), True)
    prompts += voxels_to_prompts(np.argwhere(label == background), False)
    previous = label == LABEL_VALUE
    return prompts, previous if previous.any() else None


class InferenceEngine:
    """The served model with its worker pool and sessions (see the module docstring).

    Args:
        model: a model name or run folder for :func:`load_interactive_model`, or a model object.
        name: the name clients use for the model (``/infer/{name}``); default ``sarcomakit``.
        workers: prediction threads.
        session_ttl_s: seconds an unused session is kept.
        max_sessions: sessions kept at most (least recently used dropped first).
        device: where a network runs.
    """

    def __init__(self, model: str | Path | InteractiveModel, *, name: str = "sarcomakit", workers: int = 2,
                 session_ttl_s: float = 1800.0, max_sessions: int = 16, device: str = "cpu") -> None:
        self.name = name
        self.device = device
        self.spec = str(model) if isinstance(model, str | Path) else getattr(model, "name", type(model).__name__)
        self._model = load_interactive_model(model, device=device) if isinstance(model, str | Path) else model
        self.model_version = 1
        self.session_ttl_s = session_ttl_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, ImageSession] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sarcomakit-infer")

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> InteractiveModel:
        return self._model

    @property
    def trainable(self) -> bool:
        """True when the model is a network that fine-tuning can improve."""
        return getattr(self._model, "config", None) is not None and hasattr(self._model, "grid_model")

    def swap_model(self, spec: str | Path) -> None:
        """Load the model ``spec`` and serve it from now on; sessions of the old model are dropped."""
        model = load_interactive_model(spec, device=self.device)
        with self._lock:
            self._model = model
            self.spec = str(spec)
            self.model_version += 1
            self._sessions.clear()

    # ------------------------------------------------------------------ sessions
    def _evict(self, now: float) -> None:
        for key in [k for k, s in self._sessions.items() if s.expired(now) or s.model_version != self.model_version]:
            del self._sessions[key]
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    def _open(self, key: str, image: sitk.Image, source: str, expiry_s: float) -> ImageSession:
        session = InteractiveSession(self._model, image, max_undo=1)
        entry = ImageSession(key, image, session, self.model_version, source, expiry_s)
        with self._lock:
            self._sessions[key] = entry
            self._sessions.move_to_end(key)
            self._evict(time.time())
        return entry

    def get_session(self, session_id: str) -> ImageSession | None:
        """The live session ``session_id`` (its expiry is renewed), None when unknown or expired."""
        with self._lock:
            self._evict(time.time())
            entry = self._sessions.get(session_id)
            if entry is not None:
                entry.last_used = time.time()
                self._sessions.move_to_end(session_id)
            return entry

    def create_session(self, image: sitk.Image, source: str, expiry_s: float | None = None) -> ImageSession:
        """A new explicit session for ``image`` (what ``PUT /session/`` does)."""
        return self._open(uuid.uuid4().hex, image, source, expiry_s or self.session_ttl_s)

    def remove_session(self, session_id: str) -> ImageSession | None:
        with self._lock:
            return self._sessions.pop(session_id, None)

    def session_count(self) -> int:
        with self._lock:
            self._evict(time.time())
            return len(self._sessions)

    def image_session(self, image_id: str, path: Path, loader: Callable[[], sitk.Image]) -> ImageSession:
        """The cached session of a datastore image, opened (read and prepared) when missing or stale."""
        key = f"image:{image_id}:{path.stat().st_mtime_ns}"
        entry = self.get_session(key)
        return entry if entry is not None else self._open(key, loader(), image_id, self.session_ttl_s)

    # ------------------------------------------------------------------ inference
    async def run(self, function: Callable[[], T]) -> T:
        """Run ``function`` in the worker pool and await it."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, function)

    def segment(self, entry: ImageSession, prompts: Sequence[Prompt], previous: np.ndarray | None) -> InferResult:
        """Predict from ``prompts`` (and the previous mask) on the session's image; blocking, for the pool."""
        started = time.perf_counter()
        if not prompts:
            raise UserInputError("no prompts: give foreground points, or a label map with foreground scribbles.")
        with entry.lock:
            entry.session.replace(prompts, previous)
            mask = entry.session.predict()
            model_latency = entry.session.last_latency_s or 0.0
            image = entry.session.mask_image()
        entry.last_used = time.time()
        return InferResult(mask, image, model_latency, time.perf_counter() - started, len(prompts))

    def describe(self) -> dict[str, Any]:
        """What ``/info/`` says about the model."""
        n_channels = getattr(self._model, "n_channels", None)
        return {"spec": self.spec, "version": self.model_version, "channels": n_channels,
                "trainable": self.trainable, "sessions": self.session_count(),
                "kind": type(self._model).__name__}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._sessions.clear()


def check_label_grid(label: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """The label's array when it lies on the reference image's voxel grid (same size); else a UserInputError."""
    if label.GetSize() != reference.GetSize():
        raise UserInputError(f"the label has size {list(label.GetSize())}, the image {list(reference.GetSize())} "
                             "(ITK order).", fix="send a label map on the image's grid.")
    spacing_ok = all(math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-4)
                     for a, b in zip(label.GetSpacing(), reference.GetSpacing(), strict=True))
    if not spacing_ok:
        raise UserInputError("the label's spacing differs from the image's.",
                             fix="send a label map on the image's grid.")
    array = sitk.GetArrayFromImage(label)
    if array.ndim != 3:
        raise UserInputError("the label map must be a scalar 3D image.")
    return np.rint(array).astype(np.int64) if np.issubdtype(array.dtype, np.floating) else array.astype(np.int64)
