"""Image IO keeps geometry and refuses damaged data; atomic writes never leave partial files."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path, write_json
from sarcomakit.core.io.image import Geometry, array_to_image, read_header, read_image, write_image


def _oblique_image() -> sitk.Image:
    array = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.1, 4.5))
    image.SetOrigin((-12.5, 30.25, 7.0))
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1.0]])
    image.SetDirection(rotation.ravel().tolist())
    return image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path: Path, suffix: str) -> None:
    image = _oblique_image()
    path = write_image(image, tmp_path / f"case{suffix}")
    back = read_image(path)
    assert Geometry.of(back).matches(Geometry.of(image), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_geometry_array_order_and_dict_round_trip() -> None:
    geometry = Geometry.of(_oblique_image())
    assert geometry.array_shape == (5, 6, 7)
    assert geometry.array_spacing == (4.5, 1.1, 0.8)
    assert Geometry.from_dict(geometry.to_dict()) == geometry
    assert Geometry.of(geometry.reference_image()).matches(geometry)


def test_array_to_image_takes_reference_geometry() -> None:
    reference = _oblique_image()
    mask = array_to_image(np.zeros((5, 6, 7), np.uint8), reference)
    assert Geometry.of(mask).matches(Geometry.of(reference))


def test_missing_and_corrupt_files_raise_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not found"):
        read_image(tmp_path / "absent.nii.gz")
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserInputError, match="cannot be read") as info:
        read_image(bad)
    assert str(bad) in str(info.value) and "Fix:" in str(info.value)


def test_atomic_path_leaves_target_untouched_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("crash mid-write")
    assert target.read_text(encoding="utf-8").strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# ---------------------------------------------------------------------- damaged files are refused
def _noisy_volume(dtype=np.float32) -> sitk.Image:
    rng = np.random.default_rng(0)
    image = sitk.GetImageFromArray((100 + 20 * rng.standard_normal((12, 20, 24))).astype(dtype))
    image.SetSpacing((0.9, 0.9, 3.0))
    return image


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("fraction", [0.5, 0.995])
def test_truncated_file_is_refused_naming_the_file(tmp_path: Path, suffix: str, fraction: float) -> None:
    path = _cut(write_image(_noisy_volume(), tmp_path / f"scan{suffix}", compress=suffix != ".nii"), fraction)
    if suffix.startswith(".nii"):  # what the check guards against: ITK pads a short NIfTI with zeros
        assert sitk.ReadImage(str(path)).GetSize() == (24, 20, 12)
    with pytest.raises(UserInputError, match="is truncated or corrupt") as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and message.count("Fix:") == 1 and "copy the file again" in message


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_truncated_detached_data_is_refused(tmp_path: Path, suffix: str) -> None:
    write_image(_noisy_volume(), tmp_path / f"scan{suffix}", compress=False)
    [data] = [p for p in tmp_path.iterdir() if not p.name.endswith(suffix)]
    _cut(data, 0.5)
    with pytest.raises(UserInputError, match="is truncated or corrupt"):
        read_image(tmp_path / f"scan{suffix}")


def test_damaged_gzip_stream_is_refused(tmp_path: Path) -> None:
    path = write_image(_noisy_volume(), tmp_path / "scan.nii.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="truncated or corrupt .*damaged"):
        read_image(path)


def test_unusual_but_complete_gzip_streams_are_read(tmp_path: Path) -> None:
    image = _noisy_volume()
    plain = write_image(image, tmp_path / "scan.nii", compress=False).read_bytes()
    members = tmp_path / "members.nii.gz"  # two gzip members, as concatenating tools write
    members.write_bytes(gzip.compress(plain[:1000]) + gzip.compress(plain[1000:]))
    trailing = tmp_path / "trailing.nii.gz"  # bytes after the voxels
    trailing.write_bytes(gzip.compress(plain + b"\0" * 64))
    for path in (members, trailing):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_non_finite_voxels_are_refused_and_kept_for_inspection(tmp_path: Path, suffix: str) -> None:
    array = sitk.GetArrayFromImage(_noisy_volume())
    array[3, 4, 5] = np.nan
    array[0, 0, 0] = np.inf
    array[1, 1, 1] = -np.inf
    path = write_image(sitk.GetImageFromArray(array), tmp_path / f"scan{suffix}")
    with pytest.raises(UserInputError, match=r"has 1 NaN and 2 infinite voxel\(s\)") as info:
        read_image(path)
    assert str(info.value).startswith(str(path))
    with pytest.raises(UserInputError, match="NaN"):  # the check runs before a cast could hide the values
        read_image(path, sitk.sitkInt16)
    kept = sitk.GetArrayFromImage(read_image(path, check_finite=False))
    assert np.isnan(kept[3, 4, 5]) and kept[0, 0, 0] == np.inf and kept[1, 1, 1] == -np.inf  # not zeroed


def test_folder_given_for_an_image_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "case01"
    folder.mkdir()
    with pytest.raises(UserInputError, match="is a folder, not an image file"):
        read_image(folder)
    write_image(_noisy_volume(), folder / "t1.nii.gz")
    with pytest.raises(UserInputError, match="is a folder, not an image file") as info:
        read_image(folder)
    assert str(folder / "t1.nii.gz") in str(info.value)  # the fix points at the file inside
    with pytest.raises(UserInputError, match="is a folder, not an image file"):
        read_header(folder)


def _nifti_variants(tmp_path: Path) -> list[Path]:
    """NIfTI files as other tools write them: data types, scaling, 2D/4D, byte order, qform-only, oblique."""
    rng = np.random.default_rng(1)
    oblique = np.array([[0, -1.2, 0, 10], [0.9, 0, 0, -3], [0, 0, -2.5, 4], [0, 0, 0, 1]])
    variants = [(np.uint8, None, (7, 6, 5), np.diag([1.5, 2, 3, 1])), (np.int16, (2.0, -1.0), (7, 6, 5), oblique),
                (np.uint16, None, (7, 6, 5, 3), oblique), (np.float32, (0.5, 3.0), (7, 6), np.eye(4)),
                (np.float64, None, (7, 6, 5, 1), oblique), (np.int32, (1.0, 0.0), (7, 6, 1), np.eye(4))]
    paths = []
    for i, (dtype, scaling, shape, affine) in enumerate(variants):
        image = nib.Nifti1Image(rng.integers(0, 100, size=shape).astype(dtype), affine, dtype=dtype)
        if scaling is not None:
            image.header.set_slope_inter(*scaling)
        if i % 2:
            image.header.set_sform(None, code=0)
        paths.append(tmp_path / f"variant{i}{'.nii.gz' if i % 3 else '.nii'}")
        nib.save(image, paths[-1])
    big_endian = nib.Nifti1Image(rng.normal(size=(5, 6, 7)).astype(">f4"), oblique,
                                 header=nib.Nifti1Header(endianness=">"))
    paths.append(tmp_path / "big_endian.nii.gz")
    nib.save(big_endian, paths[-1])
    return paths


def test_nifti_voxels_read_by_us_equal_itk_on_complete_files(tmp_path: Path) -> None:
    """ITK is the oracle where it is right (complete files, finite values): same grid, type and voxels."""
    for path in _nifti_variants(tmp_path):
        ours, itk = read_image(path), sitk.ReadImage(str(path))
        assert ours.GetPixelID() == itk.GetPixelID(), path
        assert (ours.GetSize(), ours.GetSpacing(), ours.GetOrigin(), ours.GetDirection()) == (
            itk.GetSize(), itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection()), path
        np.testing.assert_allclose(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(itk), rtol=1e-6,
                                   err_msg=str(path))


def test_geometry_differences_are_short_phrases() -> None:
    a = Geometry.of(_oblique_image())
    b = Geometry(a.size, (0.8, 1.1, 3.0), tuple(o + 5 for o in a.origin), a.direction)
    assert a.differences(a) == [] and a.matches(a)
    assert a.differences(b) == ["spacing (0.8, 1.1, 3) vs (0.8, 1.1, 4.5) mm",
                                "origin (-7.5, 35.25, 12) vs (-12.5, 30.25, 7) mm"]
    assert not a.matches(b)
