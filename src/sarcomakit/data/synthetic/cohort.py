"""Synthetic sarcoma cases and cohorts: the default data of the demo and the tests.

Case ``i`` of a cohort depends only on ``(seed, i)``: its patient (anatomy, tumour, findings,
grade, survival) comes from random streams keyed by ``(seed, i)`` alone, and its acquisition from
one keyed by ``(seed, i)`` and the site protocols of ``seed``. A cohort of 10 cases is therefore the
first 10 cases of a cohort of 24, and the patient does not change with ``spacing_scale``, ``n_sites``
or ``channels``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.cohort_runner import run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.io.image import Geometry, array_to_image, write_image
from sarcomakit.data.manifest import DEFAULT_LABELS, Case, Manifest
from sarcomakit.data.synthetic.acquisition import Acquisition, draw_acquisition
from sarcomakit.data.synthetic.anatomy import draw_limb
from sarcomakit.data.synthetic.clinical import draw_grade, draw_survival, true_log_hazard
from sarcomakit.data.synthetic.contrast import CHANNELS, render_channel
from sarcomakit.data.synthetic.scene import Scene, draw_scene
from sarcomakit.data.synthetic.tumour import draw_tumour

GENERATOR_VERSION = 1
PARAMETERS_FILE = "synthetic.json"
# Random streams of a case, keyed (seed, case index, stream).
_ANATOMY, _TUMOUR, _FINDINGS, _SURVIVAL, _ACQUISITION, _NOISE = range(6)


def case_id_of(case_index: int) -> str:
    """The id of case ``case_index``: ``STS_000``, ``STS_001``, ..."""
    return f"STS_{case_index:03d}"


@dataclass(frozen=True)
class CaseDesign:
    """Everything drawn for one case before any voxel is rendered (cheap to compute)."""

    case_index: int
    seed: int
    scene: Scene
    acquisition: Acquisition
    volume_ml: float
    necrosis_fraction: float
    log_hazard: float
    survival_time: float
    event: int

    @property
    def case_id(self) -> str:
        return case_id_of(self.case_index)

    @property
    def grade(self) -> str:
        return self.scene.tumour.grade

    def extra(self) -> dict[str, float | str]:
        """Descriptive columns for the manifest beyond the standard clinical fields."""
        acquisition = self.acquisition
        return {
            "tumour_volume_ml": round(self.volume_ml, 3),
            "tumour_diameter_mm": round(self.scene.tumour.diameter_mm, 1),
            "necrosis_fraction": round(self.necrosis_fraction, 3),
            "suv_max": round(self.scene.tumour.suv_max, 2),
            "true_log_hazard": round(self.log_hazard, 4),
            "orientation": acquisition.orientation,
            "inplane_spacing_mm": round(acquisition.inplane_mm, 3),
            "slice_thickness_mm": round(acquisition.slice_mm, 3),
            "findings": ";".join(f.name for f in self.scene.findings) or "none",
        }


@dataclass
class SyntheticCase:
    """One rendered case: co-registered channel arrays, label, tissue map, geometry and clinical truth.

    Arrays are (z, y, x) as from ``sitk.GetArrayFromImage``; ``images`` are float32 except CT (int16 HU).
    ``tissue`` holds the :class:`~sarcomakit.data.synthetic.anatomy.Tissue` code of every voxel.
    """

    case_id: str
    images: dict[str, np.ndarray]
    label: np.ndarray
    tissue: np.ndarray
    geometry: Geometry
    grade: str
    survival_time: float
    event: int
    site: str
    extra: dict[str, float | str]

    def image(self, channel: str) -> sitk.Image:
        """The channel as a SimpleITK image with its geometry."""
        return array_to_image(self.images[channel], self.geometry)

    def label_image(self) -> sitk.Image:
        return array_to_image(self.label, self.geometry)


def _rng(seed: int, case_index: int, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, case_index, stream, *more])


def design_case(case_index: int, seed: int, *, n_sites: int = 3, spacing_scale: float = 1.0) -> CaseDesign:
    """Draw case ``case_index`` of the cohort of ``seed``: patient, acquisition and clinical truth."""
    limb = draw_limb(_rng(seed, case_index, _ANATOMY))
    tumour_rng = _rng(seed, case_index, _TUMOUR)
    tumour = draw_tumour(tumour_rng, limb, draw_grade(tumour_rng))
    scene = draw_scene(_rng(seed, case_index, _FINDINGS), limb, tumour)
    volume_ml, necrosis_fraction = scene.tumour_statistics()
    log_hazard = true_log_hazard(tumour.grade, volume_ml)
    survival_time, event = draw_survival(_rng(seed, case_index, _SURVIVAL), log_hazard)
    acquisition = draw_acquisition(_rng(seed, case_index, _ACQUISITION), scene, seed=seed, n_sites=n_sites,
                                   spacing_scale=spacing_scale)
    return CaseDesign(case_index=case_index, seed=seed, scene=scene, acquisition=acquisition, volume_ml=volume_ml,
                      necrosis_fraction=necrosis_fraction, log_hazard=log_hazard, survival_time=survival_time,
                      event=event)


def render_case(design: CaseDesign, channels: Sequence[str] = CHANNELS) -> SyntheticCase:
    """Render a designed case on its acquisition grid (each channel has its own noise stream)."""
    maps = design.scene.render(design.acquisition.grid)
    images = {ch: render_channel(ch, design.scene, maps, design.acquisition,
                                 _rng(design.seed, design.case_index, _NOISE, CHANNELS.index(ch)))
              for ch in channels}
    return SyntheticCase(case_id=design.case_id, images=images, label=maps.label, tissue=maps.tissue,
                         geometry=design.acquisition.grid.geometry, grade=design.grade,
                         survival_time=design.survival_time, event=design.event, site=design.acquisition.site,
                         extra=design.extra())


def make_synthetic_case(case_index: int, seed: int, *, channels: Sequence[str] = CHANNELS, n_sites: int = 3,
                        spacing_scale: float = 1.0) -> SyntheticCase:
    """Case ``case_index`` of the synthetic cohort of ``seed``, in memory (no files).

    Args:
        case_index: position of the case in the cohort (0-based).
        seed: cohort seed (>= 0).
        channels: any subset of ``("T1", "T2FS", "PET", "CT")``.
        n_sites: number of acquisition sites; the case's site is drawn among them.
        spacing_scale: factor on the voxel spacing (2.0 gives 8x fewer voxels, same anatomy).

    Returns:
        The rendered case with its clinical truth.

    Example:
        >>> case = make_synthetic_case(0, seed=0, channels=("T2FS",), spacing_scale=2.0)
        >>> case.images["T2FS"].shape == case.label.shape
        True
    """
    _check_arguments(1, seed, channels, n_sites, spacing_scale, case_index=case_index)
    design = design_case(case_index, seed, n_sites=n_sites, spacing_scale=spacing_scale)
    return render_case(design, channels)


def make_synthetic_cohort(out_dir: str | Path, n_cases: int = 24, seed: int = 0, *,
                          channels: Sequence[str] = CHANNELS, n_sites: int = 3, spacing_scale: float = 1.0,
                          overwrite: bool = False, show_progress: bool = False) -> Manifest:
    """Write a synthetic multi-modal sarcoma cohort as NIfTI files plus a manifest.

    Layout: ``out_dir/images/{case_id}_{CHANNEL}.nii.gz``, ``out_dir/labels/{case_id}.nii.gz`` (uint8,
    1 = gross tumour including necrosis), ``out_dir/manifest.csv`` and ``manifest.json`` and
    ``out_dir/synthetic.json`` (the generator parameters). Every file is written atomically; a case
    whose files all exist is kept (rerunning resumes) unless ``overwrite``. Nothing outside
    ``out_dir`` is touched.

    Args:
        out_dir: the cohort folder (created if missing).
        n_cases: number of cases.
        seed: cohort seed (>= 0); case ``i`` depends only on ``(seed, i)``.
        channels: any subset of ``("T1", "T2FS", "PET", "CT")``.
        n_sites: number of acquisition sites (``site-A``, ``site-B``, ...).
        spacing_scale: factor on every voxel spacing.
        overwrite: re-render cases whose files exist.
        show_progress: show a progress bar.

    Returns:
        The manifest as written (loaded from ``manifest.json``).

    Raises:
        UserInputError: bad arguments, an unwritable folder, or a folder holding a cohort made with
            other parameters (without ``overwrite``).
    """
    _check_arguments(n_cases, seed, channels, n_sites, spacing_scale)
    out = Path(out_dir)
    parameters = {"generator": "sarcomakit.data.synthetic", "version": GENERATOR_VERSION, "seed": seed,
                  "n_sites": n_sites, "spacing_scale": spacing_scale}
    _claim_folder(out, parameters, overwrite)

    designs = [design_case(i, seed, n_sites=n_sites, spacing_scale=spacing_scale) for i in range(n_cases)]

    def paths(design: CaseDesign) -> tuple[dict[str, Path], Path]:
        images = {ch: out / "images" / f"{design.case_id}_{ch}.nii.gz" for ch in channels}
        return images, out / "labels" / f"{design.case_id}.nii.gz"

    def is_done(design: CaseDesign) -> bool:
        images, label = paths(design)
        return not overwrite and label.exists() and all(p.exists() for p in images.values())

    def write(design: CaseDesign) -> None:
        case = render_case(design, channels)
        images, label = paths(design)
        for channel, path in images.items():
            write_image(case.image(channel), path)
        write_image(case.label_image(), label)  # last: its presence marks the case complete

    outcome = run_per_case(designs, write, name=lambda d: d.case_id, description="synthetic cases",
                           is_done=is_done, show_progress=show_progress)
    if outcome.failures:
        name, message = next(iter(outcome.failures.items()))
        raise UserInputError(f"{len(outcome.failures)} case(s) could not be written (first: {name}: {message}).",
                             path=out, fix="check disk space and permissions, then rerun; finished cases are kept.")

    cases = []
    for design in designs:
        images, label = paths(design)
        cases.append(Case(case_id=design.case_id, images=images, label=label, grade=design.grade,
                          survival_time=design.survival_time, event=design.event, site=design.acquisition.site,
                          extra=design.extra()))
    manifest = Manifest(channels=list(channels), cases=cases, labels=dict(DEFAULT_LABELS))
    manifest.save(out / "manifest.csv")
    manifest.save(out / "manifest.json")
    return Manifest.load(out / "manifest.json")


def _check_arguments(n_cases: int, seed: int, channels: Sequence[str], n_sites: int, spacing_scale: float,
                     case_index: int = 0) -> None:
    unknown = [ch for ch in channels if ch not in CHANNELS]
    if unknown or not channels or len(set(channels)) != len(channels):
        raise UserInputError(f"channels {list(channels)} are not a subset of {list(CHANNELS)}.",
                             fix=f"choose distinct channels among {', '.join(CHANNELS)}.")
    if n_cases < 1:
        raise UserInputError(f"number of cases must be at least 1 (got {n_cases}).", fix="pass --cases 1 or more.")
    if seed < 0 or case_index < 0:
        raise UserInputError(f"seed and case index must be >= 0 (got {seed}, {case_index}).",
                             fix="use a non-negative seed.")
    if n_sites < 1:
        raise UserInputError(f"number of sites must be at least 1 (got {n_sites}).", fix="pass --sites 1 or more.")
    if not 0.25 <= spacing_scale <= 4.0:
        raise UserInputError(f"spacing scale {spacing_scale} is outside [0.25, 4].",
                             fix="use a spacing scale between 0.25 (fine) and 4 (coarse).")


def _claim_folder(out: Path, parameters: dict, overwrite: bool) -> None:
    """Create ``out`` and record the generator parameters; refuse to mix two cohorts in one folder."""
    record = out / PARAMETERS_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        if record.exists() and not overwrite:
            try:
                existing = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                existing = None
            if existing != parameters:
                raise UserInputError(
                    f"holds a synthetic cohort made with other parameters ({existing}).", path=out,
                    fix="pass --overwrite (overwrite=True) to replace it, or choose another folder.")
        write_json(record, parameters)
    except OSError as exc:
        raise UserInputError(f"cannot be written ({exc.strerror}).", path=out,
                             fix="choose a folder you can write to.") from exc
