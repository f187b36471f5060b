"""The plan: target spacing, normalisation, crop, patch and batch size; training and inference share it.

Rules (nnU-Net v2's, reproduced; all spatial lists in array order z, y, x):

Target spacing
    The median spacing per axis. If the worst (largest) median spacing is more than 3x the best of the
    other axes *and* the median size along that axis (after crop, in voxels) times 3 is below the
    smallest median size of the other axes, that axis is a thick-slice axis: its target becomes the
    10th percentile of the cases' spacings along it, but never below the largest other spacing. The
    axis is recorded as ``low_res_axis``.

Normalisation
    Channels named ``CT`` (or declared ``ct`` in ``channel_kinds``) use the dataset foreground
    statistics (see :mod:`sarcomakit.planning.normalize`); others use a per-image z-score, computed
    within the nonzero mask when cropping to the nonzero region shrinks the median case below 3/4 of
    its voxels.

Patch and batch size (memory model, documented in :func:`estimate_memory_mb`)
    Start from a patch with the target spacing's aspect ratio and 256^3 voxels, clipped to the median
    shape and rounded to multiples of ``2**depth``; while a batch of 2 does not fit the memory budget,
    shrink the axis that is longest in mm by ``2**depth`` voxels. The batch size is then what fits the
    budget, capped so that one step sees at most 5% of the dataset's voxels, and never below 2.

Learnt preprocessing (:func:`with_learnt_steps`, ``pipeline="minimal"``)
    When the network learns a step (``intensity``: learnable windows/standardisation; ``spacing``: a
    learnable resizer or zoom), the plan leaves it out: every channel's scheme becomes ``none`` (its CT
    statistics kept, to initialise the learnt windows) and ``resample`` is false, so each case keeps its
    native grid after reorientation, conversion to float and the nonzero crop (the minimal pipeline,
    which cannot be learnt). ``learnt_steps`` records which steps the network is trusted with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text
from sarcomakit.planning.fingerprint import Fingerprint, compute_fingerprint
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.resample import ANISOTROPY_THRESHOLD, new_shape

if TYPE_CHECKING:
    from sarcomakit.data.manifest import Manifest

DEFAULT_MEMORY_BUDGET_MB = 8192.0
"""Default budget: the 8 GB GPU that nnU-Net's default planner targets."""
NETWORK_DEPTH = 4
"""Poolings of the reference U-Net: patch sides are multiples of ``2**NETWORK_DEPTH`` (16)."""
BASE_FEATURES = 32
MAX_FEATURES = 320
ACTIVATIONS_PER_LEVEL = 12
"""Feature maps kept for the backward pass per level and feature channel (see :func:`estimate_memory_mb`)."""
BYTES_PER_VALUE = 4
MIN_BATCH_SIZE = 2
MAX_DATASET_FRACTION_PER_STEP = 0.05
MAX_PATCH_VOXELS = 256**3
MASK_NORM_CROP_FRACTION = 0.75
CHANNEL_KINDS = ("ct", "zscore", "percentile", "none")
LEARNABLE_STEPS = ("intensity", "spacing", "crop", "sampling")
"""Steps a network can learn: ``intensity`` and ``spacing`` replace plan steps; ``crop``, ``sampling`` add to them."""


class Plan(pydantic.BaseModel):
    """Everything preprocessing, training and inference need to agree on (spatial lists in z, y, x).

    Attributes:
        channels: channel names, in the order of the network's input channels.
        labels: label name -> value; the network predicts ``len(labels)`` classes, class 0 background.
        orientation: every case is reoriented to it before resampling (undone on restore).
        target_spacing: mm; each case's grid keeps its field of view, so its spacing is within half a
            voxel over the extent of this.
        anisotropic, low_res_axis: whether the thick-slice rule applied, and to which axis.
        crop_to_nonzero: crop each case to the bounding box of its nonzero voxels.
        normalization: one entry per channel, in channel order.
        median_shape: median case shape after crop and resampling.
        patch_size, batch_size: for training, from the memory model (:func:`estimate_memory_mb`).
        memory_budget_mb: the budget they were fitted to.
        fingerprint_file: the fingerprint JSON the plan came from (relative to the plan's folder).
        resample: resample to ``target_spacing`` (false: keep each case's native grid; the network may
            learn the resampling).
        learnt_steps: preprocessing steps the network learns instead (see :func:`with_learnt_steps`).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    version: int = 1
    channels: list[str]
    labels: dict[str, int]
    orientation: str = "LPS"
    target_spacing: list[float]
    anisotropic: bool
    low_res_axis: int | None
    crop_to_nonzero: bool = True
    normalization: list[ChannelNormalization]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    memory_budget_mb: float
    fingerprint_file: str | None = None
    resample: bool = True
    learnt_steps: list[str] = pydantic.Field(default_factory=list)

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> Plan:
        if [n.channel for n in self.normalization] != list(self.channels):
            raise ValueError("normalization must list one entry per channel, in channel order")
        for name in ("target_spacing", "median_shape", "patch_size"):
            value = getattr(self, name)
            if len(value) != 3 or any(v <= 0 for v in value):
                raise ValueError(f"{name} must hold three positive values (z, y, x), got {value}")
        unknown = set(self.learnt_steps) - set(LEARNABLE_STEPS)
        if unknown:
            raise ValueError(f"unknown learnt step(s) {sorted(unknown)}; steps are {list(LEARNABLE_STEPS)}")
        return self

    def save(self, path: str | Path) -> Path:
        """Write the plan as indented JSON, atomically; returns the path."""
        return write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan JSON.

        Raises:
            UserInputError: the file is missing or is not a valid plan.
        """
        p = Path(path)
        if p.is_dir():
            inside = p / "plan.json"
            raise UserInputError("is a folder, not a plan file.", path=p,
                                 fix=f"give {inside}." if inside.is_file() else "give the plan's .json file.")
        if not p.is_file():
            raise UserInputError("plan file not found.", path=p,
                                 fix="write one with 'sarcomakit plan MANIFEST'.")
        try:
            return cls.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise UserInputError(f"is not valid JSON ({exc.msg}, line {exc.lineno}).", path=p,
                                 fix="rewrite it with 'sarcomakit plan MANIFEST'.") from exc
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'plan'}: {e['msg']}"
                                 for e in exc.errors()[:5])
            raise UserInputError(f"is not a valid plan ({problems}).", path=p,
                                 fix="rewrite it with 'sarcomakit plan MANIFEST'.") from exc


# ---------------------------------------------------------------------------- target spacing
def determine_target_spacing(fingerprint: Fingerprint,
                             threshold: float = ANISOTROPY_THRESHOLD) -> tuple[list[float], int | None]:
    """Target spacing (median, with the thick-slice rule) and the low-resolution axis or None."""
    spacings = fingerprint.spacings
    target = np.percentile(spacings, 50, axis=0)
    median_size = np.percentile(fingerprint.shapes_after_crop, 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    other_spacing = max(target[a] for a in others)
    aniso_spacing = target[worst] > threshold * other_spacing
    aniso_voxels = median_size[worst] * threshold < min(median_size[a] for a in others)
    if not (aniso_spacing and aniso_voxels):
        return [float(s) for s in target], None
    target[worst] = max(float(np.percentile(spacings[:, worst], 10)), other_spacing)
    return [float(s) for s in target], worst


# ---------------------------------------------------------------------------- normalisation
def channel_kind(channel: str, channel_kinds: dict[str, str] | None = None) -> str:
    """Normalisation scheme of a channel: ``channel_kinds`` first, else ``ct`` for a channel named CT."""
    if channel_kinds and channel in channel_kinds:
        kind = channel_kinds[channel].lower()
        if kind not in CHANNEL_KINDS:
            raise UserInputError(f"unknown channel kind {channel_kinds[channel]!r} for channel {channel}.",
                                 fix=f"use one of {', '.join(CHANNEL_KINDS)}.")
        return kind
    return "ct" if channel.upper() == "CT" else "zscore"


def determine_normalization(fingerprint: Fingerprint,
                            channel_kinds: dict[str, str] | None = None) -> list[ChannelNormalization]:
    """Per-channel normalisation (see the module docstring)."""
    unknown = set(channel_kinds or {}) - set(fingerprint.channels)
    if unknown:
        raise UserInputError(f"channel kind given for unknown channel(s) {', '.join(sorted(unknown))}.",
                             fix=f"the cohort's channels are {', '.join(fingerprint.channels)}.")
    use_mask = fingerprint.median_relative_size_after_crop < MASK_NORM_CROP_FRACTION
    specs = []
    for channel in fingerprint.channels:
        kind = channel_kind(channel, channel_kinds)
        if kind == "ct":
            stats = fingerprint.foreground_intensity.get(channel)
            if stats is None or stats.mean is None:
                raise UserInputError(f"channel {channel} is normalised as CT but has no foreground voxels.",
                                     fix="give label masks with foreground, or declare the channel 'zscore'.")
            specs.append(ChannelNormalization(
                channel=channel, scheme="ct", clip_low=stats.percentile_00_5, clip_high=stats.percentile_99_5,
                mean=stats.mean, std=stats.std))
        else:
            specs.append(ChannelNormalization(channel=channel, scheme=kind,
                                              use_nonzero_mask=use_mask and kind == "zscore"))
    return specs


# ---------------------------------------------------------------------------- patch and batch
def features_per_level(depth: int = NETWORK_DEPTH) -> list[int]:
    """Feature channels of each resolution level of the reference U-Net: 32, 64, ... capped at 320."""
    return [min(MAX_FEATURES, BASE_FEATURES * 2**level) for level in range(depth + 1)]


def estimate_memory_mb(patch_size: list[int] | tuple[int, ...], batch_size: int = 1,
                       depth: int = NETWORK_DEPTH) -> float:
    """Activation memory (MiB) of a 3D U-Net training step, a deliberately simple model.

    ``memory = batch * BYTES_PER_VALUE * ACTIVATIONS_PER_LEVEL * sum_l (voxels / 8**l) * features_l``

    Level ``l`` of a U-Net of ``depth`` poolings works on ``voxels / 8**l`` voxels with
    ``features_l = min(32 * 2**l, 320)`` channels. Per level, the encoder's two convolution blocks
    and the decoder's two each keep their convolution, normalisation and nonlinearity outputs for the
    backward pass (4 x 3 = 12 maps), in float32. Weights, optimiser state and workspace are
    comparatively small for 3D patches and are left out. With these constants a 128^3 patch with a
    batch of 2 needs about 8 GiB, as nnU-Net's default planner assumes for an 8 GB GPU.
    """
    voxels = float(np.prod(patch_size, dtype=np.float64))
    values = sum(voxels / 8**level * f for level, f in enumerate(features_per_level(depth)))
    return batch_size * BYTES_PER_VALUE * ACTIVATIONS_PER_LEVEL * values / 2**20


def _round_to_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(np.floor(value / multiple + 0.5)) * multiple)


def determine_patch_and_batch(target_spacing: list[float], median_shape: list[int], n_cases: int,
                              memory_budget_mb: float, depth: int = NETWORK_DEPTH) -> tuple[list[int], int]:
    """Patch size (z, y, x) and batch size for ``memory_budget_mb`` (see the module docstring)."""
    multiple = 2**depth
    spacing = np.asarray(target_spacing, dtype=np.float64)
    aspect = 1.0 / spacing
    initial = aspect * (MAX_PATCH_VOXELS / np.prod(aspect)) ** (1 / 3)
    patch = [_round_to_multiple(min(p, m), multiple) for p, m in zip(initial, median_shape, strict=True)]
    while estimate_memory_mb(patch, MIN_BATCH_SIZE, depth) > memory_budget_mb:
        shrinkable = [a for a in range(3) if patch[a] > multiple]
        if not shrinkable:
            break
        axis = max(shrinkable, key=lambda a: patch[a] * spacing[a])
        patch[axis] -= multiple
    fits = int(memory_budget_mb // estimate_memory_mb(patch, 1, depth))
    dataset_voxels = float(np.prod(median_shape, dtype=np.float64)) * n_cases
    cap = int(round(dataset_voxels * MAX_DATASET_FRACTION_PER_STEP / np.prod(patch, dtype=np.float64)))
    return patch, max(min(fits, cap), MIN_BATCH_SIZE)


# ---------------------------------------------------------------------------- plan
def make_plan(fingerprint: Fingerprint, *, channel_kinds: dict[str, str] | None = None,
              memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, target_spacing: list[float] | None = None,
              patch_size: list[int] | None = None, fingerprint_file: str | None = None,
              pipeline: str = "fixed") -> Plan:
    """Derive a plan from a fingerprint with nnU-Net's rules (module docstring).

    Args:
        fingerprint: the cohort's fingerprint.
        channel_kinds: normalisation per channel name (``ct``, ``zscore``, ``none``), overriding the
            default (``ct`` for a channel named CT, else ``zscore``).
        memory_budget_mb: memory for one training step, MiB.
        target_spacing: (z, y, x) mm, overriding the median-spacing rule.
        patch_size: (z, y, x) voxels, overriding the memory model (the batch size still follows it).
        fingerprint_file: where the fingerprint was saved, recorded in the plan.
        pipeline: ``fixed`` (nnU-Net's) or ``minimal`` (intensity and spacing left to learnable layers,
            :func:`with_learnt_steps`).
    """
    if pipeline not in ("fixed", "minimal"):
        raise UserInputError(f"unknown pipeline {pipeline!r}.", fix="use fixed or minimal.")
    if not fingerprint.cases:
        raise UserInputError("the fingerprint lists no cases.", fix="plan a cohort with at least one case.")
    if memory_budget_mb <= 0:
        raise UserInputError(f"memory budget must be positive, got {memory_budget_mb}.",
                             fix="pass e.g. 8192.")
    if target_spacing is not None:
        if len(target_spacing) != 3 or min(target_spacing) <= 0:
            raise UserInputError(f"target spacing must be three positive numbers (z,y,x): {target_spacing}.",
                                 fix="pass e.g. 3.0,0.8,0.8.")
        spacing = [float(s) for s in target_spacing]
        low_res_axis = _low_res_axis_of(spacing)
    else:
        spacing, low_res_axis = determine_target_spacing(fingerprint)
    shapes = [new_shape(c.shape_after_crop, c.spacing, spacing) for c in fingerprint.cases]
    median_shape = [int(round(v)) for v in np.median(np.array(shapes), axis=0)]
    patch, batch = determine_patch_and_batch(spacing, median_shape, len(fingerprint.cases), memory_budget_mb)
    if patch_size is not None:
        if len(patch_size) != 3 or min(patch_size) <= 0:
            raise UserInputError(f"patch size must be three positive integers (z,y,x), got {patch_size}.",
                                 fix="pass e.g. 32,128,128.")
        patch = [int(p) for p in patch_size]
        fits = int(memory_budget_mb // estimate_memory_mb(patch, 1))
        batch = max(MIN_BATCH_SIZE, min(batch, fits))
    plan = Plan(channels=list(fingerprint.channels), labels=dict(fingerprint.labels),
                orientation=fingerprint.orientation, target_spacing=spacing,
                anisotropic=low_res_axis is not None, low_res_axis=low_res_axis, crop_to_nonzero=True,
                normalization=determine_normalization(fingerprint, channel_kinds), median_shape=median_shape,
                patch_size=patch, batch_size=batch, memory_budget_mb=float(memory_budget_mb),
                fingerprint_file=fingerprint_file)
    return with_learnt_steps(plan, ("intensity", "spacing")) if pipeline == "minimal" else plan


def with_learnt_steps(plan: Plan, steps: list[str] | tuple[str, ...],
                      channels: list[str] | None = None) -> Plan:
    """A copy of ``plan`` that leaves the ``steps`` the network learns to it (module docstring): ``intensity``
    sets the scheme of ``channels`` (default every channel) to ``none`` (statistics kept), ``spacing`` turns
    resampling off."""
    unknown = set(steps) - set(LEARNABLE_STEPS)
    if unknown:
        raise UserInputError(f"unknown learnt step(s) {sorted(unknown)}.", fix=f"use {', '.join(LEARNABLE_STEPS)}.")
    learnt = set(plan.channels if channels is None else channels) if "intensity" in steps else set()
    normalization = [n.model_copy(update={"scheme": "none", "use_nonzero_mask": False}) if n.channel in learnt
                     else n for n in plan.normalization]
    return plan.model_copy(update={"normalization": normalization, "resample": plan.resample and "spacing" not in steps,
                                   "learnt_steps": sorted(set(plan.learnt_steps) | set(steps))})


def _low_res_axis_of(spacing: list[float]) -> int | None:
    values = np.asarray(spacing)
    worst = int(np.argmax(values))
    others = np.delete(values, worst)
    return worst if values[worst] > ANISOTROPY_THRESHOLD * others.max() else None


def plan_cohort(manifest: Manifest, out_path: str | Path, *, num_samples_per_case: int = 10000, seed: int = 0,
                show_progress: bool = True, **kw: Any) -> Plan:
    """Fingerprint a cohort and plan it; writes ``out_path`` and ``fingerprint.json`` beside it.

    Args:
        manifest: a :class:`~sarcomakit.data.manifest.Manifest`.
        out_path: where the plan JSON goes.
        **kw: passed to :func:`make_plan` (``channel_kinds``, ``memory_budget_mb``, ``target_spacing``,
            ``patch_size``).
    """
    out = Path(out_path)
    fingerprint = compute_fingerprint(manifest, num_samples_per_case=num_samples_per_case, seed=seed,
                                      show_progress=show_progress)
    fingerprint_path = out.with_name("fingerprint.json")
    plan = make_plan(fingerprint, fingerprint_file=fingerprint_path.name, **kw)
    fingerprint.save(fingerprint_path)
    plan.save(out)
    return plan
