"""Simulated interaction states for training: a previous mask and the prompts a user gave so far.

An interactive network must do two things: turn first prompts on an empty mask into a mask, and
turn a wrong mask plus a correction into a better one. Training samples therefore come in two kinds
(the mixture of DeepEdit and nnInteractive):

- **initial** (probability ``initial_fraction``): an empty previous mask and the robot user's first
  prompts (a protocol drawn from ``initial_protocols``: medial-line scribble with a background loop,
  or clicks);
- **corrective**: the first prompts, then ``1 .. max_corrections`` rounds, each on a fresh
  *perturbed* copy of the reference standing for the model's previous answer, corrected by the robot
  on its largest error component (a corrective kind drawn from ``corrective_kinds``). The last
  perturbed mask is the previous mask the network sees, so the newest prompt always points at an
  error of the mask it is given, as in a real session.

Perturbations imitate a model's typical mistakes: ``dilate`` and ``erode`` (a boundary too far out or
in), ``shift`` (a misplaced mask), ``cut`` (a part of the tumour missed beyond a random plane),
``blob`` (a false-positive lump beside the tumour, a look-alike neighbour) and ``empty`` (nothing
found). One or two are applied in turn. Training with the model in the loop (the network's own
answer as the previous mask) is done by the task's objective with :func:`add_correction`.

Prompts are kept as voxel maps (``positive``, ``negative``), the form the network input is built
from (:func:`sarcomakit.interactive.prompts.encode_seeds`); a later prompt overrides an earlier one
on shared voxels, as :func:`~sarcomakit.interactive.prompts.rasterize_prompts` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from sarcomakit.interactive.prompts import rasterize_prompts
from sarcomakit.interactive.robot import RobotConfig, RobotUser

PERTURBATIONS: tuple[str, ...] = ("dilate", "erode", "shift", "cut", "blob", "empty")
INITIAL_PROTOCOLS: tuple[str, ...] = ("scribble", "clicks", "extreme_points")
CORRECTIVE_KINDS: tuple[str, ...] = ("scribble", "click")


@dataclass(frozen=True)
class InteractionState:
    """What the network is given: the previous mask and the prompt voxels so far (all ``(Z, Y, X)`` bool)."""

    previous: np.ndarray
    positive: np.ndarray
    negative: np.ndarray


@dataclass(frozen=True)
class SimulationConfig:
    """How training states are drawn (see the module docstring).

    Attributes:
        initial_fraction: probability of an initial state (empty previous mask, first prompts only).
        max_corrections: most corrective rounds in a corrective state.
        perturbations: the perturbations drawn from.
        max_shift: largest shift and dilation/erosion depth, in voxels.
        initial_protocols: first-round protocols of the robot, drawn uniformly.
        corrective_kinds: kinds of corrective prompt, drawn uniformly per state.
        jitter: the robot's stroke jitter in voxels.
    """

    initial_fraction: float = 0.3
    max_corrections: int = 3
    perturbations: tuple[str, ...] = PERTURBATIONS
    max_shift: int = 3
    initial_protocols: tuple[str, ...] = ("scribble", "clicks")
    corrective_kinds: tuple[str, ...] = CORRECTIVE_KINDS
    jitter: int = 1

    def __post_init__(self) -> None:
        if not 0.0 <= self.initial_fraction <= 1.0:
            raise ValueError(f"initial_fraction must be in [0, 1], got {self.initial_fraction}")
        if self.max_corrections < 1 or self.max_shift < 1:
            raise ValueError("max_corrections and max_shift must be at least 1")
        for name, allowed in (("perturbations", PERTURBATIONS), ("initial_protocols", INITIAL_PROTOCOLS),
                              ("corrective_kinds", CORRECTIVE_KINDS)):
            chosen = getattr(self, name)
            if not chosen or set(chosen) - set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {', '.join(allowed)}, got {chosen!r}")

    def robot(self, rng: np.random.Generator) -> RobotUser:
        """A robot with a protocol drawn from the configured ones, seeded from ``rng``."""
        initial: Any = self.initial_protocols[int(rng.integers(len(self.initial_protocols)))]
        corrective: Any = self.corrective_kinds[int(rng.integers(len(self.corrective_kinds)))]
        config = RobotConfig(initial=initial, corrective=corrective, plane="random", jitter=self.jitter)
        return RobotUser(config, seed=int(rng.integers(2**31)))


def simulate_state(reference: np.ndarray, rng: np.random.Generator,
                   config: SimulationConfig | None = None) -> InteractionState:
    """An initial or corrective training state for the object ``reference`` (boolean ``(Z, Y, X)``, non-empty)."""
    config = config or SimulationConfig()
    reference = np.asarray(reference, dtype=bool)
    robot = config.robot(rng)
    prompts = list(robot.initial_prompts(reference))
    previous = np.zeros(reference.shape, dtype=bool)
    if rng.random() >= config.initial_fraction:
        for _ in range(int(rng.integers(1, config.max_corrections + 1))):
            previous = perturb(reference, rng, config)
            prompts += robot.corrective_prompts(reference, previous)
    positive, negative = rasterize_prompts(prompts, reference.shape)
    return InteractionState(previous=previous, positive=positive, negative=negative)


def add_correction(state: InteractionState, reference: np.ndarray, prediction: np.ndarray,
                   robot: RobotUser) -> InteractionState:
    """The state after the robot corrects ``prediction`` (which becomes the previous mask), for model-in-the-loop."""
    prediction = np.asarray(prediction, dtype=bool)
    prompts = robot.corrective_prompts(np.asarray(reference, dtype=bool), prediction)
    positive, negative = state.positive.copy(), state.negative.copy()
    for prompt in prompts:
        index = tuple(prompt.covered_voxels().T)
        (positive if prompt.positive else negative)[index] = True
        (negative if prompt.positive else positive)[index] = False
    return InteractionState(previous=prediction, positive=positive, negative=negative)


def perturb(reference: np.ndarray, rng: np.random.Generator, config: SimulationConfig | None = None) -> np.ndarray:
    """A wrong mask near ``reference``: one or two perturbations drawn from ``config.perturbations``."""
    config = config or SimulationConfig()
    mask = np.asarray(reference, dtype=bool).copy()
    for _ in range(int(rng.integers(1, 3))):
        kind = config.perturbations[int(rng.integers(len(config.perturbations)))]
        mask = _PERTURB[kind](mask, rng, config.max_shift)
    return mask


# ---------------------------------------------------------------------- perturbations
def _dilate(mask: np.ndarray, rng: np.random.Generator, depth: int) -> np.ndarray:
    if not mask.any():
        return mask
    return ndimage.binary_dilation(mask, iterations=int(rng.integers(1, depth + 1)))


def _erode(mask: np.ndarray, rng: np.random.Generator, depth: int) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=int(rng.integers(1, depth + 1)))


def _shift(mask: np.ndarray, rng: np.random.Generator, depth: int) -> np.ndarray:
    offset = rng.integers(-depth, depth + 1, size=3)
    return ndimage.shift(mask.astype(np.uint8), offset, order=0, mode="constant", cval=0).astype(bool)


def _cut(mask: np.ndarray, rng: np.random.Generator, depth: int) -> np.ndarray:
    """Remove the part of the mask beyond a random plane through a random mask voxel."""
    voxels = np.argwhere(mask)
    if len(voxels) < 2:
        return mask
    point = voxels[int(rng.integers(len(voxels)))]
    normal = rng.normal(size=3)
    grids = np.meshgrid(*[np.arange(n) - p for n, p in zip(mask.shape, point, strict=True)], indexing="ij",
                        sparse=True)
    side = sum(g * n for g, n in zip(grids, normal, strict=True)) > 0
    return mask & ~side


def _blob(mask: np.ndarray, rng: np.random.Generator, depth: int) -> np.ndarray:
    """Add an ellipsoid lump centred just outside the mask's boundary (a look-alike neighbour)."""
    voxels = np.argwhere(mask)
    if not len(voxels):
        return mask
    shell = np.argwhere(ndimage.binary_dilation(mask, iterations=depth) & ~mask)
    if not len(shell):
        return mask
    centre = shell[int(rng.integers(len(shell)))]
    extent = voxels.max(axis=0) - voxels.min(axis=0) + 1
    radii = np.maximum(1.0, extent * rng.uniform(0.15, 0.4, size=3))
    grids = np.meshgrid(*[np.arange(n) - c for n, c in zip(mask.shape, centre, strict=True)], indexing="ij",
                        sparse=True)
    lump = sum((g / r) ** 2 for g, r in zip(grids, radii, strict=True)) <= 1
    return mask | lump


def _empty(mask: np.ndarray, rng: np.random.Generator, depth: int) -> np.ndarray:
    return np.zeros_like(mask)


_PERTURB = {"dilate": _dilate, "erode": _erode, "shift": _shift, "cut": _cut, "blob": _blob, "empty": _empty}


def tuple_option(value: str | Sequence[str]) -> tuple[str, ...]:
    """A comma-separated string or a sequence of names, as a tuple (task options arrive as either)."""
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)
