"""Dataset fingerprint: what planning needs to know about a cohort (nnU-Net's rules).

Per case, after reorientation to the plan orientation: spacing and shape (array order z, y, x), shape
after cropping to the nonzero region of all channels, and foreground intensity statistics per channel,
where the foreground is ``label > 0`` as in nnU-Net. Per channel, up to ``num_samples_per_case``
foreground voxels are drawn from each case (with replacement, seeded); the dataset statistics
(mean, std, median, 0.5 / 99.5 percentiles, min, max) are computed from the pooled samples.

Cases without a label contribute no foreground samples. When no case has a label, the nonzero region
stands in for the foreground and ``foreground_source`` says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
import SimpleITK as sitk

from sarcomakit.core.cohort_runner import CohortFailed, run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text
from sarcomakit.core.io.image import Geometry, read_image
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.data.validation import check_case_grid
from sarcomakit.planning.resample import nonzero_bbox, orientation_of, reorient

PERCENTILES = (0.5, 50.0, 99.5)


class IntensityStatistics(pydantic.BaseModel):
    """Summary of a set of intensities; all None when the set is empty."""

    mean: float | None = None
    std: float | None = None
    median: float | None = None
    percentile_00_5: float | None = None
    percentile_99_5: float | None = None
    min: float | None = None
    max: float | None = None
    count: int = 0

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStatistics:
        """Statistics of ``values`` (any shape)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return cls()
        low, median, high = np.percentile(values, PERCENTILES)
        return cls(mean=float(values.mean()), std=float(values.std()), median=float(median),
                   percentile_00_5=float(low), percentile_99_5=float(high), min=float(values.min()),
                   max=float(values.max()), count=int(values.size))


class CaseFingerprint(pydantic.BaseModel):
    """What the fingerprint records about one case (spatial lists in array order z, y, x)."""

    case_id: str
    spacing: list[float]
    shape: list[int]
    shape_after_crop: list[int]
    original_orientation: str = "LPS"
    foreground: dict[str, IntensityStatistics] = pydantic.Field(default_factory=dict)

    @property
    def relative_size_after_crop(self) -> float:
        return float(np.prod(self.shape_after_crop, dtype=np.float64) / np.prod(self.shape, dtype=np.float64))


class Fingerprint(pydantic.BaseModel):
    """Fingerprint of a cohort; ``samples`` (per channel, pooled over cases) stay in memory only."""

    version: int = 1
    channels: list[str]
    labels: dict[str, int] = pydantic.Field(default_factory=lambda: {"background": 0, "tumour": 1})
    orientation: str = "LPS"
    cases: list[CaseFingerprint]
    foreground_intensity: dict[str, IntensityStatistics] = pydantic.Field(default_factory=dict)
    foreground_source: Literal["label", "nonzero"] = "label"
    samples: dict[str, np.ndarray] | None = pydantic.Field(default=None, exclude=True, repr=False)

    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)

    @property
    def spacings(self) -> np.ndarray:
        """(N, 3) spacings of the cases, array order."""
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        """(N, 3) shapes of the cases after crop-to-nonzero, array order."""
        return np.array([c.shape_after_crop for c in self.cases], dtype=np.float64)

    @property
    def median_relative_size_after_crop(self) -> float:
        """Median over cases of (voxels after crop) / (voxels before); nnU-Net masks z-scores below 3/4."""
        return float(np.median([c.relative_size_after_crop for c in self.cases]))

    def save(self, path: str | Path) -> Path:
        """Write the fingerprint as JSON, atomically."""
        return write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        """Read a fingerprint JSON written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise UserInputError("fingerprint file not found.", path=p,
                                 fix="run 'sarcomakit plan' to write it.")
        try:
            return cls.model_validate(json.loads(p.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, pydantic.ValidationError) as exc:
            raise UserInputError(f"is not a valid fingerprint ({_first_line(exc)}).", path=p,
                                 fix="rerun 'sarcomakit plan' to rewrite it.") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def load_case_images(case: Case, channels: list[str], orientation: str, *, allow_missing: bool = False,
                     ) -> tuple[list[sitk.Image], sitk.Image | None, Geometry]:
    """Read a case's channels (and label) and reorient them; checks that all share one grid.

    Args:
        allow_missing: a channel the case lacks becomes an all-zero image on the grid of its other
            channels (its name is in :func:`missing_channels`); at least one channel must be present.

    Returns:
        The reoriented channel images, the reoriented label (or None) and the input grid.

    Raises:
        UserInputError: a channel is missing (and not allowed to be), or channels/label disagree in geometry.
    """
    missing = missing_channels(case, channels)
    if missing and (not allow_missing or len(missing) == len(channels)):
        raise UserInputError(f"case {case.case_id} has no image for channel(s) {', '.join(missing)}.",
                             fix="give every case one image per declared channel.")
    present = [ch for ch in channels if ch not in missing]
    read = {ch: read_image(case.images[ch], sitk.sitkFloat32) for ch in present}
    label = read_image(case.label) if case.label is not None else None
    check_same_grid(read, label, {ch: case.images[ch] for ch in present}, case.label)
    template = read[present[0]]
    images = [read[ch] if ch in read else _zeros_like(template) for ch in channels]
    reoriented_label = reorient(label, orientation) if label is not None else None
    return [reorient(im, orientation) for im in images], reoriented_label, Geometry.of(images[0])


def missing_channels(case: Case, channels: list[str]) -> list[str]:
    """The declared channels a case has no image for."""
    return [ch for ch in channels if ch not in case.images]


def _zeros_like(image: sitk.Image) -> sitk.Image:
    zeros = sitk.Image(image.GetSize(), sitk.sitkFloat32)
    zeros.CopyInformation(image)
    return zeros


def check_same_grid(images: Mapping[str, sitk.Image], label: sitk.Image | None = None,
                    paths: Mapping[str, Path] | None = None, label_path: Path | None = None) -> None:
    """Raise UserInputError unless every channel (by name) and the label lie on the first channel's grid
    (:func:`sarcomakit.data.validation.check_case_grid`, the check ``validate`` runs too)."""
    check_case_grid({name: Geometry.of(image) for name, image in images.items()},
                    Geometry.of(label) if label is not None else None, paths=paths, label_path=label_path)


def fingerprint_arrays(case_id: str, data: np.ndarray, label: np.ndarray | None, spacing_zyx: list[float],
                       channels: list[str], *, original_orientation: str = "LPS",
                       num_samples: int = 10000, rng: np.random.Generator | None = None,
                       ) -> tuple[CaseFingerprint, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fingerprint of one reoriented case given as arrays.

    Args:
        data: (C, Z, Y, X) channels; label: (Z, Y, X) or None.

    Returns:
        The case fingerprint, foreground samples per channel (label > 0) and nonzero-region samples
        per channel (used only when no case of the cohort has a label).
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    bbox = nonzero_bbox(data)
    crop = tuple(slice(a, b) for a, b in bbox)
    cropped = data[(slice(None), *crop)]
    shape_after_crop = list(cropped.shape[1:])
    stats: dict[str, IntensityStatistics] = {}
    fg_samples: dict[str, np.ndarray] = {}
    nonzero_samples: dict[str, np.ndarray] = {}
    foreground = label[crop] > 0 if label is not None else None
    nonzero = np.any(cropped != 0, axis=0)
    for c, channel in enumerate(channels):
        if foreground is not None:
            voxels = cropped[c][foreground]
            stats[channel] = IntensityStatistics.of(voxels)
            fg_samples[channel] = (rng.choice(voxels, num_samples, replace=True) if voxels.size
                                   else np.empty(0, np.float32))
        else:
            voxels = cropped[c][nonzero]
            nonzero_samples[channel] = (rng.choice(voxels, num_samples, replace=True) if voxels.size
                                        else np.empty(0, np.float32))
    record = CaseFingerprint(case_id=case_id, spacing=[float(s) for s in spacing_zyx],
                             shape=[int(n) for n in data.shape[1:]], shape_after_crop=shape_after_crop,
                             original_orientation=original_orientation, foreground=stats)
    return record, fg_samples, nonzero_samples


def compute_fingerprint(manifest: Manifest, *, num_samples_per_case: int = 10000, seed: int = 0,
                        orientation: str = "LPS", show_progress: bool = True) -> Fingerprint:
    """Fingerprint a cohort, one case at a time (see the module docstring for what is recorded).

    Args:
        manifest: the cohort.
        num_samples_per_case: foreground voxels drawn per case and channel.
        seed: seeds the sampling (case ``i`` uses ``default_rng([seed, i])``).
        orientation: orientation every case is brought to first (the plan's).

    Raises:
        UserInputError: the manifest is empty.
        CohortFailed: some cases cannot be read (after trying all; ``exc.result.failures`` lists them).
    """
    if not manifest.cases:
        raise UserInputError("the manifest lists no cases.", path=manifest.source,
                             fix="add cases to the manifest.")
    index = {c.case_id: i for i, c in enumerate(manifest.cases)}

    def analyse(case: Case) -> tuple[CaseFingerprint, dict[str, np.ndarray], dict[str, np.ndarray]]:
        images, label, original = load_case_images(case, manifest.channels, orientation, allow_missing=True)
        data = np.stack([sitk.GetArrayViewFromImage(im) for im in images])
        label_array = sitk.GetArrayViewFromImage(label) if label is not None else None
        record, fg, nonzero = fingerprint_arrays(
            case.case_id, data, label_array, list(reversed(images[0].GetSpacing())), manifest.channels,
            original_orientation=orientation_of(original), num_samples=num_samples_per_case,
            rng=np.random.default_rng([seed, index[case.case_id]]))
        for channel in missing_channels(case, manifest.channels):  # zero-filled: no intensity statistics
            record.foreground.pop(channel, None)
            fg.pop(channel, None)
            nonzero.pop(channel, None)
        return record, fg, nonzero

    outcome = run_per_case(manifest.cases, analyse, name=lambda c: c.case_id, description="fingerprint",
                           show_progress=show_progress)
    if outcome.failures:
        raise CohortFailed(outcome, f"no fingerprint: {len(outcome.failures)} of {len(manifest.cases)} case(s) "
                           "failed; fix or remove them ('sarcomakit validate' lists every problem).",
                           path=manifest.source)
    results = [outcome.results[c.case_id] for c in manifest.cases]
    return assemble_fingerprint([r[0] for r in results], [r[1] for r in results], [r[2] for r in results],
                                channels=manifest.channels, labels=manifest.labels, orientation=orientation)


def assemble_fingerprint(records: list[CaseFingerprint], fg_samples: list[dict[str, np.ndarray]],
                         nonzero_samples: list[dict[str, np.ndarray]], *, channels: list[str],
                         labels: dict[str, int], orientation: str = "LPS") -> Fingerprint:
    """Pool the per-case samples into the dataset's foreground statistics."""
    source: Literal["label", "nonzero"] = "label" if any(s for s in fg_samples) else "nonzero"
    per_case = fg_samples if source == "label" else nonzero_samples
    pooled = {ch: np.concatenate([s[ch] for s in per_case if ch in s] or [np.empty(0)]) for ch in channels}
    return Fingerprint(channels=list(channels), labels=dict(labels), orientation=orientation, cases=records,
                       foreground_intensity={ch: IntensityStatistics.of(v) for ch, v in pooled.items()},
                       foreground_source=source, samples=pooled)

