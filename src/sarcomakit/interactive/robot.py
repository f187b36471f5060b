"""A simulated annotator (robot user) that prompts like a radiologist, for training and evaluation.

The robot knows the reference mask and plays the protocol of interactive segmentation papers:

Initial prompts (:meth:`RobotUser.initial_prompts`), one of:

- ``"scribble"``: a positive scribble along the medial line (the longest path through the 2D
  skeleton) of the tumour on the slice where it is largest, in the chosen plane, and a negative
  scribble along the contour of the tumour's slice dilated by ``background_margin`` voxels, i.e.
  a loop drawn around it in the background;
- ``"clicks"``: a positive click at the deepest tumour voxel (largest distance to the border)
  and ``n_negative_clicks`` random clicks on that background loop, in 3D;
- ``"extreme_points"``: InteractiveNet's protocol, six positive clicks at the tumour's extreme
  voxels along each axis (moved by up to ``jitter`` voxels, staying inside the tumour).

Corrective rounds (:meth:`RobotUser.corrective_prompts`): the largest 3D connected component of
the error (missed tumour or over-segmentation, 6-connectivity) is found; on the slice (of the
chosen plane) where that component is largest, its largest 2D piece receives one scribble,
positive for missed tumour and negative for over-segmentation, drawn in a shape picked at random
among ``shapes``: the medial line, a random straight line through the piece, or the contour of
the piece eroded by about a third of its depth, as ScribblePrompt and nnInteractive simulate
users. With ``corrective="click"`` the robot clicks the deepest voxel of the component instead.

Jitter shifts a stroke by a random offset plus a smooth wobble of up to ``jitter`` voxels, and
keeps only the shifted voxels that stay in the intended region: every prompt lies inside the
region it is meant for (tumour, background, or the error component), which the tests check.
All randomness comes from one generator seeded at construction, so a robot replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric
from skimage.morphology import skeletonize

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.prompts import Click, Prompt, Scribble

Plane = Literal["axial", "coronal", "sagittal", "random"]
ScribbleShape = Literal["medial_line", "random_line", "eroded_contour"]
#: Slice normal of each plane, in array order (z, y, x).
PLANE_AXES: dict[str, int] = {"axial": 0, "coronal": 1, "sagittal": 2}
SCRIBBLE_SHAPES: tuple[str, ...] = ("medial_line", "random_line", "eroded_contour")
_FACE_CONNECTIVITY_3D = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class RobotConfig:
    """How the simulated annotator prompts; every field has the default of the evaluation protocol.

    Attributes:
        initial: first-round protocol: ``"scribble"``, ``"clicks"`` or ``"extreme_points"``.
        corrective: corrective prompt kind: ``"scribble"`` or ``"click"``.
        plane: plane of every scribble (``"random"``: drawn anew for each scribble).
        initial_shape: shape of the first positive scribble.
        shapes: shapes a corrective scribble is drawn from, uniformly.
        jitter: amplitude in voxels of the random displacement of a stroke (0: none).
        background_margin: distance in voxels between the tumour and the background loop.
        background_scribble: whether the first round adds the background loop.
        n_negative_clicks: negative clicks of the ``"clicks"`` protocol.
        min_error_voxels: error components smaller than this are left alone (a user would not
            bother with a few voxels).
    """

    initial: Literal["scribble", "clicks", "extreme_points"] = "scribble"
    corrective: Literal["scribble", "click"] = "scribble"
    plane: Plane = "random"
    initial_shape: ScribbleShape = "medial_line"
    shapes: tuple[ScribbleShape, ...] = ("medial_line", "random_line", "eroded_contour")
    jitter: int = 1
    background_margin: int = 3
    background_scribble: bool = True
    n_negative_clicks: int = 1
    min_error_voxels: int = 1

    def __post_init__(self) -> None:
        choices = {"initial": ("scribble", "clicks", "extreme_points"), "corrective": ("scribble", "click"),
                   "plane": (*PLANE_AXES, "random"), "initial_shape": SCRIBBLE_SHAPES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserInputError(f"robot {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}.")
        if not self.shapes or any(shape not in SCRIBBLE_SHAPES for shape in self.shapes):
            raise UserInputError(f"robot shapes must be a non-empty subset of {', '.join(SCRIBBLE_SHAPES)}, "
                                 f"got {self.shapes!r}.")
        for name in ("jitter", "n_negative_clicks", "min_error_voxels"):
            if int(getattr(self, name)) < 0:
                raise UserInputError(f"robot {name} must be >= 0, got {getattr(self, name)}.")
        if self.background_margin < 1:
            raise UserInputError(f"robot background_margin must be >= 1 voxel, got {self.background_margin}.")


@dataclass(frozen=True)
class ErrorComponent:
    """One connected component of the error: missed tumour (``positive``) or over-segmentation."""

    mask: np.ndarray
    positive: bool

    @property
    def size(self) -> int:
        return int(self.mask.sum())


class RobotUser:
    """Seeded simulated annotator; see the module docstring for the protocol.

    Example:
        >>> import numpy as np
        >>> reference = np.zeros((20, 20, 20), bool); reference[5:15, 6:14, 4:16] = True
        >>> robot = RobotUser(RobotConfig(plane="axial"), seed=0)
        >>> [(type(p).__name__, p.positive) for p in robot.initial_prompts(reference)]
        [('Scribble', True), ('Scribble', False)]
    """

    def __init__(self, config: RobotConfig | None = None, seed: int = 0) -> None:
        self.config = config or RobotConfig()
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ rounds
    def initial_prompts(self, reference: np.ndarray) -> list[Prompt]:
        """Prompts of the first round for the object ``reference`` (boolean ``(Z, Y, X)``)."""
        reference = _check_reference(reference)
        if self.config.initial == "extreme_points":
            return self._extreme_points(reference)
        if self.config.initial == "clicks":
            return self._clicks(reference)
        axis = self._axis()
        index = _largest_slice(reference, axis)
        tumour = _largest_piece(np.take(reference, index, axis=axis))
        prompts: list[Prompt] = [self._scribble(tumour, self.config.initial_shape, True, axis, index)]
        if self.config.background_scribble:
            background = ~np.take(reference, index, axis=axis)
            loop = _contour(ndimage.binary_dilation(tumour, iterations=self.config.background_margin)) & background
            if loop.any():
                points = self._jitter(np.argwhere(loop), background)
                prompts.append(Scribble.from_voxels(_to_3d(points, axis, index), positive=False, axis=axis))
        return prompts

    def corrective_prompts(self, reference: np.ndarray, prediction: np.ndarray) -> list[Prompt]:
        """One prompt on the largest error component of ``prediction``; empty when nothing is worth fixing."""
        reference = _check_reference(reference)
        error = largest_error_component(reference, np.asarray(prediction, dtype=bool))
        if error is None or error.size < max(self.config.min_error_voxels, 1):
            return []
        if self.config.corrective == "click":
            return [Click.from_voxel(_deepest_voxel(error.mask), positive=error.positive)]
        axis = self._axis()
        index = _largest_slice(error.mask, axis)
        piece = _largest_piece(np.take(error.mask, index, axis=axis))
        shape = self.config.shapes[int(self.rng.integers(len(self.config.shapes)))]
        return [self._scribble(piece, shape, error.positive, axis, index)]

    # ------------------------------------------------------------------ protocols
    def _scribble(self, region: np.ndarray, shape: str, positive: bool, axis: int, index: int) -> Scribble:
        if shape == "random_line":
            points = random_line(region, self.rng)
        elif shape == "eroded_contour":
            points = eroded_contour(region)
        else:
            points = medial_line(region)
        points = self._jitter(points, region)
        return Scribble.from_voxels(_to_3d(points, axis, index), positive=positive, axis=axis)

    def _clicks(self, reference: np.ndarray) -> list[Prompt]:
        prompts: list[Prompt] = [Click.from_voxel(_deepest_voxel(reference), positive=True)]
        loop = _contour(ndimage.binary_dilation(reference, iterations=self.config.background_margin)) & ~reference
        candidates = np.argwhere(loop)
        if self.config.n_negative_clicks and candidates.size:
            chosen = self.rng.choice(len(candidates), size=min(self.config.n_negative_clicks, len(candidates)),
                                     replace=False)
            prompts += [Click.from_voxel(candidates[i], positive=False) for i in np.sort(chosen)]
        return prompts

    def _extreme_points(self, reference: np.ndarray) -> list[Prompt]:
        voxels = np.argwhere(reference)
        prompts: list[Prompt] = []
        for axis in range(3):
            for extreme in (voxels[:, axis].min(), voxels[:, axis].max()):
                candidates = voxels[voxels[:, axis] == extreme]
                point = candidates[self.rng.integers(len(candidates))]
                if self.config.jitter:
                    near = voxels[np.abs(voxels - point).max(axis=1) <= self.config.jitter]
                    point = near[self.rng.integers(len(near))]
                prompts.append(Click.from_voxel(point, positive=True))
        return prompts

    def _axis(self) -> int:
        if self.config.plane == "random":
            return int(self.rng.integers(3))
        return PLANE_AXES[self.config.plane]

    def _jitter(self, points: np.ndarray, region: np.ndarray) -> np.ndarray:
        """Shift a stroke by a random offset plus a smooth wobble, keeping the voxels that stay in ``region``."""
        amplitude = self.config.jitter
        if amplitude == 0 or len(points) == 0:
            return points
        shift = self.rng.integers(-amplitude, amplitude + 1, size=2)
        wobble = ndimage.gaussian_filter1d(self.rng.normal(size=(len(points), 2)), sigma=max(len(points) / 8, 1.0),
                                           axis=0, mode="nearest")
        wobble *= (amplitude / 2) / max(float(np.abs(wobble).max()), 1e-9)
        moved = np.rint(points + shift + wobble).astype(np.int64)
        inside = np.all((moved >= 0) & (moved < np.asarray(region.shape)), axis=1)
        moved = moved[inside]
        moved = moved[region[tuple(moved.T)]]
        return np.unique(moved, axis=0) if len(moved) else points


# ---------------------------------------------------------------------- error components
def largest_error_component(reference: np.ndarray, prediction: np.ndarray) -> ErrorComponent | None:
    """The largest 6-connected component of missed tumour or of over-segmentation (missed tumour on ties).

    Returns:
        The component, or None when the prediction equals the reference.
    """
    best: ErrorComponent | None = None
    for positive, error in ((True, reference & ~prediction), (False, prediction & ~reference)):
        if not error.any():
            continue
        labels, _ = ndimage.label(error, structure=_FACE_CONNECTIVITY_3D)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        biggest = int(np.argmax(sizes))
        if best is None or sizes[biggest] > best.size:
            best = ErrorComponent(mask=labels == biggest, positive=positive)
    return best


# ---------------------------------------------------------------------- 2D stroke shapes
def medial_line(region: np.ndarray) -> np.ndarray:
    """The longest path through the skeleton of a connected 2D region, ``(N, 2)`` pixel indices.

    The two ends are found by the double-sweep rule (the farthest skeleton pixel from any pixel,
    then the farthest from that one), with path lengths from ``skimage.graph.MCP_Geometric``
    restricted to the skeleton.
    """
    skeleton = skeletonize(region)
    points = np.argwhere(skeleton)
    if len(points) <= 2:
        return points if len(points) else np.argwhere(region)[:1]
    costs = np.where(skeleton, 1.0, np.inf)
    start = tuple(points[0])
    for _ in range(2):
        mcp = MCP_Geometric(costs)
        cumulative, _ = mcp.find_costs([start])
        cumulative[~np.isfinite(cumulative)] = -1
        end = np.unravel_index(int(np.argmax(cumulative)), cumulative.shape)
        path, start = mcp, end
    return np.asarray(path.traceback(end), dtype=np.int64)


def random_line(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A straight stroke through a random interior pixel, at a random angle, extended while inside ``region``."""
    depth = ndimage.distance_transform_edt(region)
    candidates = np.argwhere(depth >= max(1.0, 0.5 * depth.max()))
    centre = candidates[rng.integers(len(candidates))].astype(float)
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    points = [centre.astype(np.int64)]
    for sign in (1.0, -1.0):
        step = 0.5
        while True:
            point = np.rint(centre + sign * step * direction).astype(np.int64)
            if np.any(point < 0) or np.any(point >= region.shape) or not region[tuple(point)]:
                break
            points.append(point)
            step += 0.5
    return np.unique(np.asarray(points), axis=0)


def eroded_contour(region: np.ndarray) -> np.ndarray:
    """The contour of ``region`` eroded by a third of its depth; the medial line when that leaves nothing."""
    depth = ndimage.distance_transform_edt(region)
    inner = depth > max(1.0, depth.max() / 3)
    if not inner.any():
        return medial_line(region)
    return np.argwhere(_contour(inner))


# ---------------------------------------------------------------------- internals
def _check_reference(reference: np.ndarray) -> np.ndarray:
    mask = np.asarray(reference).astype(bool, copy=False)
    if mask.ndim != 3:
        raise UserInputError(f"the reference mask must be 3D (z, y, x), got shape {mask.shape}.")
    if not mask.any():
        raise UserInputError("the reference mask is empty: there is no object to prompt for.")
    return mask


def _largest_slice(mask: np.ndarray, axis: int) -> int:
    """Index of the slice with the most mask voxels; the middle one of equally large slices."""
    areas = mask.sum(axis=tuple(a for a in range(3) if a != axis))
    candidates = np.flatnonzero(areas == areas.max())
    return int(candidates[len(candidates) // 2])


def _largest_piece(mask2d: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask2d)
    if count <= 1:
        return mask2d.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _contour(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _deepest_voxel(mask: np.ndarray) -> np.ndarray:
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
    return np.asarray(np.unravel_index(int(np.argmax(depth)), mask.shape))


def _to_3d(points: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.insert(np.asarray(points, dtype=np.int64).reshape(-1, 2), axis, index, axis=1)
