"""Images with their physical geometry, read and written through SimpleITK; damaged files are refused.

Conventions used across sarcomakit:
- an image in memory is a ``SimpleITK.Image``; its array (``sitk.GetArrayFromImage``) is in
  **(z, y, x)** order, while SimpleITK's spacing/origin/size are in **(x, y, z)** order;
- :class:`Geometry` stores the SimpleITK (x, y, z) values and converts to array order on request.
Any format SimpleITK reads works: NIfTI (``.nii``, ``.nii.gz``), NRRD, MetaImage, a DICOM series folder.

:func:`read_image` never hands out data that is not what the file holds:

- NIfTI voxels are read by us, not by ITK: ITK's NIfTI reader pads a truncated file with zeros and
  silently turns NaN/Inf into 0 (``nifti_read_buffer`` in niftilib). The whole file is read (a
  ``.nii.gz`` is decompressed once, in one pass, by libdeflate through ``imagecodecs``), its length is
  checked against what the header declares, and the array is wrapped with ITK's reading of the header,
  so geometry and pixel type are exactly what ``sitk.ReadImage`` gives;
- MetaImage data shorter than the header declares is refused before ITK reads it (ITK's own message
  says "No such file or directory"); NRRD short reads, which ITK refuses, get the same message;
- an image with NaN or infinite voxels is refused (``check_finite=False`` lets a checker count them).
"""

from __future__ import annotations

import gzip
import math
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import imagecodecs
import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.arrayproxy import ArrayProxy
from nibabel.volumeutils import apply_read_scaling

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
TRUNCATED_FIX = "re-export or copy the file again (it was cut short or damaged on the way)."

# Tolerances of "same grid" (mm for spacing, cosine units for direction); the origin may differ by a
# thousandth of the largest voxel spacing (at least ``atol``), which absorbs float round trips of headers.
GRID_ATOL = 1e-3
ORIGIN_RELATIVE_TOL = 1e-3

_NUMPY_DTYPES: dict[int, type[np.generic]] = {
    sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16, sitk.sitkInt16: np.int16,
    sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32, sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64,
    sitk.sitkFloat32: np.float32, sitk.sitkFloat64: np.float64,
}
# teem (NRRD) and MetaIO wordings of a short read
_SHORT_READ = re.compile(r"expected \d+ bytes but received|fread got only|not read completely|premature end",
                         re.IGNORECASE)


@dataclass(frozen=True)
class Geometry:
    """Physical grid of an image: size, spacing (mm), origin (mm) and direction cosines, in (x, y, z)."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader) -> Geometry:
        """The grid of an image, or of a reader after ``ReadImageInformation`` (header only)."""
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

    def differences(self, other: Geometry, *, atol: float = GRID_ATOL) -> list[str]:
        """How ``other`` departs from this grid, one short phrase per property (``other`` first, ``self``
        second, as in "spacing (1, 1, 3) vs (1, 1, 2) mm"); empty when both grids coincide within ``atol``."""
        if len(self.size) != len(other.size):
            return [f"{len(other.size)}D vs {len(self.size)}D"]
        diffs = []
        if self.size != other.size:
            diffs.append(f"shape {_fmt(other.size)} vs {_fmt(self.size)}")
        if not np.allclose(self.spacing, other.spacing, atol=atol, rtol=0):
            diffs.append(f"spacing {_fmt(other.spacing)} vs {_fmt(self.spacing)} mm")
        origin_tol = max(atol, ORIGIN_RELATIVE_TOL * max(self.spacing))
        if not np.allclose(self.origin, other.origin, atol=origin_tol, rtol=0):
            diffs.append(f"origin {_fmt(other.origin)} vs {_fmt(self.origin)} mm")
        if not np.allclose(self.direction, other.direction, atol=atol, rtol=0):
            diffs.append(f"direction {_fmt(other.direction)} vs {_fmt(self.direction)}")
        return diffs

    def matches(self, other: Geometry, *, atol: float = GRID_ATOL) -> bool:
        """True when both grids coincide (same size; spacing, origin, direction within ``atol``)."""
        return not self.differences(other, atol=atol)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says: its grid, pixel type and components per voxel."""

    geometry: Geometry
    pixel_id: int
    components: int

    @property
    def dimension(self) -> int:
        return len(self.geometry.size)


def is_image_path(path: Path) -> bool:
    """True when ``path`` has a suffix sarcomakit reads as an image file."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SUPPORTED_SUFFIXES)


def read_header(path: str | Path) -> ImageHeader:
    """Read an image file's header only (geometry, pixel type), without its voxels.

    Raises:
        UserInputError: the path is missing, a folder, or not an image.
    """
    p = _existing_file(Path(path))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _unreadable(p, exc) from exc
    return ImageHeader(Geometry.of(reader), int(reader.GetPixelID()), int(reader.GetNumberOfComponents()))


def read_image(path: str | Path, pixel_type: int | None = None, *, check_finite: bool = True) -> sitk.Image:
    """Read an image file (or a DICOM series folder) with its geometry, refusing damaged data.

    Args:
        path: the image file, or a folder holding one DICOM series.
        pixel_type: cast to this SimpleITK pixel type after reading.
        check_finite: refuse an image with NaN or infinite voxels (set False to inspect them).

    Raises:
        UserInputError: the path is missing, a folder without a DICOM series, not an image, truncated
            or corrupt, or (with ``check_finite``) holds NaN/Inf voxels. The message names the file.
    """
    p = Path(path)
    if p.is_dir():
        image = _read_dicom_folder(p)
    elif p.name.lower().endswith((".nii", ".nii.gz")):
        image = _read_nifti(_existing_file(p))
    else:
        image = _read_with_itk(_existing_file(p))
    if check_finite:
        _refuse_non_finite(sitk.GetArrayViewFromImage(image), p)
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


# ---------------------------------------------------------------------- errors
def _existing_file(p: Path) -> Path:
    if not p.exists():
        raise UserInputError("file not found.", path=p, fix="check the path, or the manifest row that names it.")
    if p.is_dir():
        raise _folder_error(p)
    return p


def _folder_error(p: Path) -> UserInputError:
    inside = sorted(f.name for f in p.iterdir() if f.is_file() and is_image_path(f))
    hint = f"give the image file itself (e.g. {p / inside[0]})." if inside else "give the path of the image file."
    return UserInputError("is a folder, not an image file.", path=p, fix=hint)


def _unreadable(p: Path, exc: Exception) -> UserInputError:
    """The error for a file a reader refused: truncated or corrupt when we can tell, else the reader's reason."""
    text = str(exc).strip()
    if _SHORT_READ.search(text):
        return _truncated(p, "the data stops before the end the header declares")
    if p.is_file():
        with open(p, "rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        if gzipped:  # a damaged gzip stream makes readers fail on the header with odd reasons
            try:
                gzip.decompress(p.read_bytes())
            except EOFError:
                return _truncated(p, "the compressed stream ends early")
            except (OSError, zlib.error) as gzip_exc:
                return _truncated(p, f"the compressed stream is damaged: {gzip_exc}")
    reason = text.splitlines()[-1].strip() if text else type(exc).__name__
    return UserInputError(f"cannot be read as an image ({reason}).", path=p,
                          fix=f"give a readable image in one of {', '.join(SUPPORTED_SUFFIXES)}.")


def _truncated(p: Path, detail: str) -> UserInputError:
    return UserInputError(f"is truncated or corrupt ({detail}).", path=p, fix=TRUNCATED_FIX)


def _refuse_non_finite(array: np.ndarray, p: Path) -> None:
    if not np.issubdtype(array.dtype, np.floating) or np.isfinite(array).all():
        return
    n_nan = int(np.isnan(array).sum())
    n_inf = int(np.isinf(array).sum())
    raise UserInputError(f"has {n_nan} NaN and {n_inf} infinite voxel(s).", path=p,
                         fix="recompute the image, or replace those voxels deliberately (e.g. with 0) and save it "
                             "again.")


# ---------------------------------------------------------------------- readers
def _read_dicom_folder(p: Path) -> sitk.Image:
    if not any(f.is_file() and not is_image_path(f) for f in p.iterdir()):
        raise _folder_error(p)  # nothing GDCM could read (and ITK would print a warning)
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(p))
    if not files:
        raise _folder_error(p)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise _unreadable(p, exc) from exc


def _read_with_itk(p: Path) -> sitk.Image:
    if p.name.lower().endswith((".mha", ".mhd")):
        _check_metaimage_length(p)
    try:
        return sitk.ReadImage(str(p))
    except RuntimeError as exc:
        raise _unreadable(p, exc) from exc


def _read_nifti(p: Path) -> sitk.Image:
    """NIfTI voxels read whole and checked (module docstring); geometry and pixel type from ITK's header read."""
    try:
        proxy = _voxel_proxy(p)  # header only: where the voxels start, their type and scaling
    except Exception as exc:  # nibabel raises many types for a damaged header
        raise _unreadable(p, exc) from exc
    offset, dtype, count = int(proxy.offset), np.dtype(proxy.dtype), math.prod(proxy.shape)
    expected = offset + count * dtype.itemsize
    buffer = _nifti_bytes(p, expected)
    if buffer.size < expected:
        raise _truncated(p, f"{buffer.size:,} of {expected:,} bytes")
    itk = read_header(p)
    target = _NUMPY_DTYPES.get(itk.pixel_id)
    if target is None or itk.components != 1 or count != math.prod(itk.geometry.size):
        return _read_with_itk(p)  # vector, complex or RGB NIfTI: rare; the length is checked already
    values = np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)
    values = apply_read_scaling(values, proxy.slope, proxy.inter)
    array = values.astype(target, copy=False).reshape(itk.geometry.array_shape)  # file order = ITK order
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(itk.geometry.spacing)
    image.SetOrigin(itk.geometry.origin)
    image.SetDirection(itk.geometry.direction)
    return image


def _voxel_proxy(p: Path) -> ArrayProxy:
    """nibabel's proxy of the file's voxels, read from the header alone (nothing is decompressed yet)."""
    proxy = getattr(nib.load(str(p)), "dataobj", None)
    if not isinstance(proxy, ArrayProxy):
        raise TypeError(f"nibabel gives no voxel proxy for this file ({type(proxy).__name__})")
    return proxy


def _nifti_bytes(p: Path, expected: int) -> np.ndarray:
    """The file's bytes, decompressed when gzipped; truncated or corrupt streams raise UserInputError.

    A gzip stream is decompressed once into a buffer of the size the header declares (libdeflate). A
    stream it cannot finish in that buffer (extra trailing data, several gzip members) is decompressed
    again with zlib, which also tells a cut-short stream ("ends early") from a damaged one.
    """
    raw = p.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return np.frombuffer(raw, dtype=np.uint8)
    try:
        # imagecodecs' stub types ``out=`` as bytearray/memoryview and the result as bytes; any writable buffer is
        # accepted, and a numpy array given is what comes back (a view of it when the stream is shorter).
        buffer = np.empty(expected, dtype=np.uint8)
        out = cast(np.ndarray, imagecodecs.gzip_decode(raw, out=buffer))  # type: ignore[arg-type]
        if out.size == expected:
            return out
    except Exception:  # noqa: S110 - any failure of the fast path is settled by the zlib pass below
        pass
    try:
        return np.frombuffer(gzip.decompress(raw), dtype=np.uint8)
    except EOFError as exc:
        raise _truncated(p, "the compressed stream ends early") from exc
    except (OSError, zlib.error) as exc:
        raise _truncated(p, f"the compressed stream is damaged: {exc}") from exc


def _check_metaimage_length(p: Path) -> None:
    """Refuse MetaImage data shorter than its header declares (ITK would say 'No such file or directory')."""
    fields: dict[str, str] = {}
    header_bytes = 0
    with open(p, "rb") as handle:
        for line in handle:
            header_bytes += len(line)
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile" or header_bytes > 65536:
                break
    data_file = fields.get("elementdatafile", "")
    if not data_file or data_file.upper() == "LIST" or "%" in data_file or "headersize" in fields:
        return  # file lists and explicit header sizes: left to ITK
    if data_file.upper() == "LOCAL":
        available = p.stat().st_size - header_bytes
        where = p
    else:
        where = p.parent / data_file
        if not where.is_file():
            raise UserInputError(f"its data file {data_file} is missing.", path=p,
                                 fix="keep the .mhd header and its data file together.")
        available = where.stat().st_size
    if fields.get("compresseddata", "false").lower() == "true":
        size_field = fields.get("compresseddatasize", "")
        expected = int(size_field) if size_field.isdigit() else 0
    else:
        header = read_header(p)
        if header.pixel_id not in _NUMPY_DTYPES:
            return  # vector pixel types: left to ITK
        itemsize = np.dtype(_NUMPY_DTYPES[header.pixel_id]).itemsize
        expected = math.prod(header.geometry.size) * header.components * itemsize
    if available < expected:
        raise _truncated(where, f"{available:,} of {expected:,} data bytes")
