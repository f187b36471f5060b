"""One user's interactive segmentation of one image: prompts in, a mask on the original grid out.

:class:`InteractiveSession` is the Python API a server calls. It holds the image (``(C, Z, Y, X)``
float32, a copy: the caller's array is never modified), the prompts so far and the current mask,
so each interaction costs one prediction in a region of interest, not a pass over the scan:

- ``add_scribble`` / ``add_click`` / ``add_box`` / ``add_prompt`` check the prompt against the
  image and record it; ``predict`` runs the model in a ROI around the prompts and the current
  mask, grown until the object is not clipped (:func:`~sarcomakit.interactive.roi.grow_roi`), and
  pastes the ROI's mask into the current mask (outside the ROI it is left as it was);
- ``undo`` returns to the state before the last ``add_*`` or ``reset`` (prompts and mask);
  ``reset`` clears prompts and mask and can itself be undone.

Everything is in voxel indices of the image as given, so anisotropic and oblique images need no
special handling; a ``SimpleITK.Image`` input keeps its geometry for :meth:`mask_image`. A model
with a ``prepare`` step (a network that resamples and normalises the image with its plan) prepares
the image once, when the session starts, and the session keeps the result in memory. Every
problem with the input, the prompts or the model's answer raises
:class:`~sarcomakit.core.errors.UserInputError` and leaves the session as it was, so a server can
report it and carry on. A re-entrant lock serialises the calls on one session, so several
threads (server workers) may share it; different sessions run in parallel.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.errors import SarcomakitError, UserInputError
from sarcomakit.core.io.image import Geometry
from sarcomakit.interactive.prompts import Box, Click, Prompt, Scribble, check_prompt_in_image
from sarcomakit.interactive.protocol import InteractiveModel
from sarcomakit.interactive.roi import Roi, RoiGrowth, grow_roi


class InteractiveSession:
    """Interactive segmentation state for one image; see the module docstring.

    Args:
        model: any :class:`~sarcomakit.interactive.protocol.InteractiveModel`.
        image: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` array, or a ``SimpleITK.Image`` (scalar or
            vector pixels, the components being channels).
        spacing: voxel size in mm in array order ``(z, y, x)``; taken from a SimpleITK image,
            1 mm when None.
        roi_margin_mm: margin around prompts and mask where the prediction starts, in mm (at
            least 2 voxels per axis).
        roi_growth: fraction of the ROI size added to a face the object touches.
        max_roi_iterations: cap on predictions per interaction while the ROI grows.
        max_roi_voxels: optional cap on the ROI volume.
        max_undo: number of states kept for :meth:`undo`.

    Example:
        >>> import numpy as np
        >>> from sarcomakit.evaluation.metrics import dice
        >>> from sarcomakit.interactive.classical import RandomWalkerModel
        >>> image = np.zeros((16, 32, 32), np.float32); image[4:12, 8:24, 8:24] = 1
        >>> session = InteractiveSession(RandomWalkerModel(), image)
        >>> _ = session.add_scribble([(8, 16, x) for x in range(12, 20)], positive=True)
        >>> _ = session.add_scribble([(8, 4, x) for x in range(4, 28)], positive=False)
        >>> _ = session.add_scribble([(8, 27, x) for x in range(4, 28)], positive=False)
        >>> bool(dice(session.predict(), image > 0) > 0.9)
        True
        >>> session.undo(), len(session.prompts), int(session.mask.sum())
        (True, 2, 0)
    """

    def __init__(self, model: InteractiveModel, image: np.ndarray | sitk.Image, *,
                 spacing: Sequence[float] | None = None, roi_margin_mm: float = 10.0, roi_growth: float = 0.5,
                 max_roi_iterations: int = 5, max_roi_voxels: int | None = None, max_undo: int = 100) -> None:
        if not callable(getattr(model, "predict", None)):
            raise UserInputError(f"{type(model).__name__} is not an interactive model: it has no predict method.")
        self.model = model
        self._reference_image: sitk.Image | None = None
        if isinstance(image, sitk.Image):
            self._reference_image = image
            spacing = tuple(reversed(image.GetSpacing())) if spacing is None else spacing
            image = sitk.GetArrayFromImage(image)
            if image.ndim == 4:  # vector pixels: components last in the array
                image = np.moveaxis(image, -1, 0)
        self.image = _checked_image(image)
        self.spacing = _checked_spacing(spacing)
        expected = getattr(model, "n_channels", None)
        if expected is not None and expected != self.image.shape[0]:
            raise UserInputError(f"the model {self.model_name} takes {expected} image channel(s), "
                                 f"the image has {self.image.shape[0]}.",
                                 fix="give the channels the model was trained on, in the same order.")
        self.geometry = _geometry(self._reference_image, self.shape, self.spacing)
        self._model_image = self._prepared_image()
        self.roi_margin = tuple(max(2, math.ceil(roi_margin_mm / s)) for s in self.spacing)
        self.roi_growth = roi_growth
        self.max_roi_iterations = max_roi_iterations
        self.max_roi_voxels = max_roi_voxels
        self.max_undo = max_undo
        self._prompts: list[Prompt] = []
        self._mask = np.zeros(self.shape, dtype=bool)
        self._history: list[tuple[tuple[Prompt, ...], np.ndarray]] = []
        self._lock = threading.RLock()
        self.last_latency_s: float | None = None
        self.last_roi: RoiGrowth | None = None

    # ------------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(Z, Y, X)`` of the image."""
        z, y, x = self.image.shape[1:]
        return z, y, x

    @property
    def model_name(self) -> str:
        return str(getattr(self.model, "name", type(self.model).__name__))

    @property
    def prompts(self) -> tuple[Prompt, ...]:
        """The prompts so far, in order."""
        with self._lock:
            return tuple(self._prompts)

    @property
    def mask(self) -> np.ndarray:
        """A copy of the current mask, boolean ``(Z, Y, X)`` on the image's grid."""
        with self._lock:
            return self._mask.copy()

    # ------------------------------------------------------------------ prompts
    def add_scribble(self, voxels: Sequence[Sequence[float]] | np.ndarray, positive: bool = True,
                     axis: int | None = None) -> Scribble:
        """Record a scribble: ``(N, 3)`` voxel indices ``(z, y, x)`` on one slice; returns the prompt."""
        scribble = Scribble.from_voxels(voxels, positive=positive, axis=axis)
        self.add_prompt(scribble)
        return scribble

    def add_click(self, voxel: Sequence[float] | np.ndarray, positive: bool = True) -> Click:
        """Record a click at voxel ``(z, y, x)``; returns the prompt."""
        click = Click.from_voxel(voxel, positive=positive)
        self.add_prompt(click)
        return click

    def add_box(self, corner_a: Sequence[float], corner_b: Sequence[float], positive: bool = True) -> Box:
        """Record a box on one slice between two inclusive corners ``(z, y, x)``; returns the prompt."""
        box = Box.from_corners(corner_a, corner_b, positive=positive)
        self.add_prompt(box)
        return box

    def add_prompt(self, prompt: Prompt) -> None:
        """Record an already built prompt (from the robot user, say) after checking it lies in the image."""
        if not isinstance(prompt, Scribble | Click | Box):
            raise UserInputError(f"{type(prompt).__name__} is not a prompt (Scribble, Click or Box).")
        check_prompt_in_image(prompt, self.shape)
        with self._lock:
            self._push_state()
            self._prompts.append(prompt)

    def undo(self) -> bool:
        """Return to the state before the last ``add_*`` or ``reset``; False when there is nothing to undo."""
        with self._lock:
            if not self._history:
                return False
            prompts, packed = self._history.pop()
            self._prompts = list(prompts)
            self._mask = np.unpackbits(packed, count=math.prod(self.shape)).reshape(self.shape).astype(bool)
            return True

    def replace(self, prompts: Sequence[Prompt], mask: np.ndarray | None = None) -> None:
        """Replace the prompts and the mask at once (undoable), checking every prompt first.

        A client that resends its whole interaction with each request (MONAI Label's clients do) gets the same
        answer whatever was asked before: ``replace(all_prompts, previous_mask)`` then :meth:`predict`.
        """
        for prompt in prompts:
            if not isinstance(prompt, Scribble | Click | Box):
                raise UserInputError(f"{type(prompt).__name__} is not a prompt (Scribble, Click or Box).")
            check_prompt_in_image(prompt, self.shape)
        new_mask = np.zeros(self.shape, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
        if new_mask.shape != self.shape:
            raise UserInputError(f"the mask has shape {new_mask.shape}, the image {self.shape}.")
        with self._lock:
            self._push_state()
            self._prompts = list(prompts)
            self._mask = new_mask

    def reset(self) -> None:
        """Clear prompts and mask (undoable)."""
        with self._lock:
            self._push_state()
            self._prompts = []
            self._mask = np.zeros(self.shape, dtype=bool)

    # ------------------------------------------------------------------ prediction
    def predict(self) -> np.ndarray:
        """Run the model on the prompts so far and return the new mask (a copy), boolean ``(Z, Y, X)``.

        Raises:
            UserInputError: no prompts yet, or the model failed or answered with a wrong shape
                (the session's state is then unchanged).
        """
        with self._lock:
            if not self._prompts:
                raise UserInputError("no prompts yet.", fix="add a scribble or a click inside the object first.")
            prompts = tuple(self._prompts)
            previous = self._mask.copy()
            initial = Roi.around(np.concatenate([p.covered_voxels() for p in prompts]))
            mask_box = Roi.around_mask(previous)
            if mask_box is not None:
                initial = initial.union(mask_box)
            started = time.perf_counter()
            growth = grow_roi(lambda roi: self._predict_in(roi, prompts, previous), initial, self.shape,
                              margin=self.roi_margin, growth=self.roi_growth, max_iterations=self.max_roi_iterations,
                              max_voxels=self.max_roi_voxels)
            self.last_latency_s = time.perf_counter() - started
            self.last_roi = growth
            previous[growth.roi.slices] = growth.mask
            self._mask = previous
            return self._mask.copy()

    def mask_image(self) -> sitk.Image:
        """The current mask as a uint8 ``SimpleITK.Image`` on the input image's grid (geometry copied)."""
        with self._lock:
            image = sitk.GetImageFromArray(self._mask.astype(np.uint8))
        if self._reference_image is not None:
            image.SetSpacing(self._reference_image.GetSpacing())
            image.SetOrigin(self._reference_image.GetOrigin())
            image.SetDirection(self._reference_image.GetDirection())
        else:
            image.SetSpacing(tuple(reversed(self.spacing)))
        return image

    # ------------------------------------------------------------------ internals
    def _predict_in(self, roi: Roi, prompts: tuple[Prompt, ...], previous: np.ndarray) -> np.ndarray:
        try:
            # the image, or what the model's own ``prepare`` made of it (which only that model reads)
            image: Any = self._model_image
            output = self.model.predict(image, prompts, previous, roi, spacing=self.spacing)
        except SarcomakitError:
            raise
        except Exception as error:  # a model's failure must not take the server down with it
            raise UserInputError(f"the model {self.model_name} failed on this image: "
                                 f"{type(error).__name__}: {error}.") from error
        mask = np.asarray(output)
        if mask.shape != roi.shape:
            raise UserInputError(f"the model {self.model_name} returned a mask of shape {mask.shape} "
                                 f"for a region of shape {roi.shape}.", fix="check the model's predict method.")
        return mask.astype(bool, copy=False)

    def _prepared_image(self) -> object:
        """What the model's optional ``prepare`` makes of the image, once per session; else the image itself."""
        prepare = getattr(self.model, "prepare", None)
        if not callable(prepare):
            return self.image
        try:
            return prepare(self.image, spacing=self.spacing, geometry=self.geometry)
        except SarcomakitError:
            raise
        except Exception as error:  # a model's failure must not take the server down with it
            raise UserInputError(f"the model {self.model_name} could not prepare this image: "
                                 f"{type(error).__name__}: {error}.") from error

    def _push_state(self) -> None:
        self._history.append((tuple(self._prompts), np.packbits(self._mask)))
        if len(self._history) > self.max_undo:
            del self._history[0]


def _checked_image(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim not in (3, 4):
        raise UserInputError(f"the image must be 3D (z, y, x) or 3D with channels first (c, z, y, x); "
                             f"got {array.ndim} dimensions, shape {array.shape}.",
                             fix="give one volume, or stack the channels of one volume on the first axis.")
    if array.ndim == 3:
        array = array[None]
    if array.size == 0 or min(array.shape) == 0:
        raise UserInputError(f"the image is empty (shape {array.shape}).")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise UserInputError(f"the image must hold real numbers, got dtype {array.dtype}.")
    data = array.astype(np.float32)  # a copy: the caller's array is never touched
    if not np.all(np.isfinite(data)):
        raise UserInputError("the image contains NaN or infinite values.",
                             fix="replace them (e.g. by the background value) before segmenting.")
    return data


def _geometry(reference: sitk.Image | None, shape: Sequence[int], spacing: Sequence[float]) -> Geometry:
    """The image's grid: the SimpleITK image's, or ``spacing`` with origin 0 and identity direction."""
    if reference is not None:
        return Geometry.of(reference)
    return Geometry(size=tuple(int(n) for n in reversed(tuple(shape))), spacing=tuple(reversed(tuple(spacing))),
                    origin=(0.0, 0.0, 0.0), direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _checked_spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise UserInputError(f"spacing must be three positive numbers in mm (z, y, x), got {tuple(spacing)}.")
    return values[0], values[1], values[2]
