"""Images with their physical geometry, read and written through SimpleITK.

Conventions used across sarcomakit:
- an image in memory is a ``SimpleITK.Image``; its array (``sitk.GetArrayFromImage``) is in
  **(z, y, x)** order, while SimpleITK's spacing/origin/size are in **(x, y, z)** order;
- :class:`Geometry` stores the SimpleITK (x, y, z) values and converts to array order on request.
Any format SimpleITK reads works: NIfTI (``.nii``, ``.nii.gz``), NRRD, MetaImage, a DICOM series folder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcomakit.errors import UserInputError
from sarcomakit.io.atomic import atomic_path

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Physical grid of an image: size, spacing (mm), origin (mm) and direction cosines, in (x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        return cls(
            size=tuple(int(s) for s in image.GetSize()),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, data: dict) -> Geometry:
        return cls(**{k: tuple(data[k]) for k in ("size", "spacing", "origin", "direction")})

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def array_shape(self) -> tuple[int, ...]:
        """Shape of the numpy array of an image on this grid, (z, y, x)."""
        return tuple(reversed(self.size))

    @property
    def array_spacing(self) -> tuple[float, ...]:
        """Spacing in array order (z, y, x)."""
        return tuple(reversed(self.spacing))

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty image on this grid, usable as a resampling reference."""
        image = sitk.Image([int(s) for s in self.size], pixel_type)
        self.apply(image)
        return image

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Stamp this geometry's spacing, origin and direction onto ``image`` (sizes must match)."""
        if tuple(image.GetSize()) != tuple(self.size):
            raise ValueError(f"image size {image.GetSize()} does not match geometry size {self.size}")
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def matches(self, other: Geometry, *, atol: float = 1e-3) -> bool:
        """True when both grids coincide (same size; spacing, origin, direction within ``atol``)."""
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=max(atol, 1e-3 * max(self.spacing)))
            and np.allclose(self.direction, other.direction, atol=atol)
        )


def is_image_path(path: Path) -> bool:
    """True when ``path`` has a suffix sarcomakit reads as an image file."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SUPPORTED_SUFFIXES)


def read_image(path: str | Path, pixel_type: int | None = None) -> sitk.Image:
    """Read an image file (or a DICOM series folder) with its geometry.

    Raises:
        UserInputError: the path is missing, not an image, or unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise UserInputError("file not found.", path=p, fix="check the path, or the manifest row that names it.")
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(p))
            if not files:
                raise UserInputError("folder holds no DICOM series.", path=p,
                                     fix="point at an image file or a folder of one DICOM series.")
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(p), pixel_type) if pixel_type is not None else sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reason"
        raise UserInputError(f"cannot be read as an image ({first}).", path=p,
                             fix=f"give a readable image in one of {', '.join(SUPPORTED_SUFFIXES)}.") from exc
    if pixel_type is not None and image.GetPixelID() != pixel_type:
        image = sitk.Cast(image, pixel_type)
    return image


def write_image(image: sitk.Image, path: str | Path, *, compress: bool = True) -> Path:
    """Write ``image`` atomically; the format follows the suffix (``.nii.gz`` by default)."""
    p = Path(path)
    with atomic_path(p) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
    return p


def array_to_image(array: np.ndarray, geometry: Geometry | sitk.Image) -> sitk.Image:
    """Wrap a (z, y, x) array as an image on ``geometry`` (a :class:`Geometry` or a reference image)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if isinstance(geometry, sitk.Image):
        image.CopyInformation(geometry)
    else:
        geometry.apply(image)
    return image
