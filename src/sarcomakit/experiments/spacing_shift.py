"""A controlled slice-thickness shift: thick-slice copies of a cohort, and folds that train on one thickness and
validate on the other.

A thick slice integrates the signal over its width, so a copy made by subsampling alone would be too sharp.
Each image is first blurred along its slice axis with a Gaussian whose full width at half maximum is the new
slice thickness (the usual model of a slice profile), then resampled linearly onto a grid whose slice spacing
is ``factor`` times the original; masks are resampled by nearest neighbour (a radiologist contours on the thick
slices). Origin, direction and in-plane grid are kept, so each copy is the same patient seen by a thick-slice
protocol. The slice axis is the axis with the largest spacing (the first axis when all are equal).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter1d

from sarcomakit.core.io.image import read_image, write_image
from sarcomakit.core.step_record import StepRecord
from sarcomakit.data.manifest import Manifest

THICK_SUFFIX = "-thick"
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def slice_axis(image: sitk.Image) -> int:
    """The image's slice axis, in ITK (x, y, z) order: the one with the largest spacing."""
    spacing = image.GetSpacing()
    return int(np.argmax(spacing)) if max(spacing) > min(spacing) else len(spacing) - 1


def thicken(image: sitk.Image, factor: float, *, is_label: bool = False) -> sitk.Image:
    """``image`` as acquired with slices ``factor`` times thicker (module docstring)."""
    axis = slice_axis(image)
    spacing = list(image.GetSpacing())
    size = list(image.GetSize())
    new_spacing = spacing.copy()
    new_spacing[axis] = spacing[axis] * factor
    new_size = size.copy()
    new_size[axis] = max(1, int(math.floor((size[axis] - 1) / factor)) + 1)
    source = image
    if not is_label:
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        numpy_axis = array.ndim - 1 - axis  # numpy is (z, y, x)
        array = gaussian_filter1d(array, sigma=factor * FWHM_TO_SIGMA, axis=numpy_axis, mode="nearest")
        source = sitk.GetImageFromArray(array)
        source.CopyInformation(image)
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    return sitk.Resample(source, new_size, sitk.Transform(), interpolator, image.GetOrigin(), new_spacing,
                         image.GetDirection(), 0.0, image.GetPixelID() if is_label else sitk.sitkFloat32)


def thick_slice_cohort(manifest: Manifest, out_dir: str | Path, factor: float) -> Manifest:
    """Thick-slice copies of every case (ids ``<id>-thick``) written as NIfTI under ``out_dir``, with their
    manifest (``out_dir/manifest.json``). A copy is reused on a rerun only when it was made from the same files
    with the same factor (a :class:`~sarcomakit.core.step_record.StepRecord` per case)."""
    out = Path(out_dir)
    record = StepRecord(out, "thick-slices")
    cases = []
    for case in manifest.cases:
        case_id = case.case_id + THICK_SUFFIX
        sources = {**case.images, **({"label": case.label} if case.label is not None else {})}
        targets = {name: out / f"{case_id}_{name}.nii.gz" for name in sources}
        if not record.is_current(case.case_id, sources, {"factor": factor}, outputs=list(targets.values())):
            for name, path in sources.items():
                write_image(thicken(read_image(path), factor, is_label=name == "label"), targets[name])
            record.save(case.case_id, sources, {"factor": factor})
        images = {channel: targets[channel] for channel in case.images}
        cases.append(replace(case, case_id=case_id, images=images, label=targets.get("label"), fold=None))
    thick = Manifest(channels=list(manifest.channels), cases=cases, labels=dict(manifest.labels))
    thick.save(out / "manifest.json")
    return Manifest.load(out / "manifest.json")


def spacing_shift_folds(manifest: Manifest, seed: int) -> list[dict[str, list[str]]]:
    """Two folds over the cohort and its thick copies: half A (thin) trains and half B (thick) validates, then
    half B (thick) trains and half A (thin) validates. Halves are drawn per site (seeded), so each case is
    validated once, on the thickness it was not trained on, and no patient is in both sides of a fold."""
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[str]] = {}
    for case in manifest.cases:
        by_site.setdefault(str(case.site), []).append(case.case_id)
    half_a: list[str] = []
    half_b: list[str] = []
    for site in sorted(by_site):
        ids = [by_site[site][i] for i in rng.permutation(len(by_site[site]))]
        total = len(half_a) + len(half_b) + len(ids)
        cut = min(len(ids), max(0, (total + 1) // 2 - len(half_a)))  # keeps the halves balanced across sites
        half_a += ids[:cut]
        half_b += ids[cut:]
    thick_b = [c + THICK_SUFFIX for c in half_b]
    return [{"train": half_a, "val": thick_b}, {"train": thick_b, "val": half_a}]
