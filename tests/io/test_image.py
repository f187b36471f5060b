"""Image IO keeps geometry; atomic writes never leave partial files."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sarcomakit.errors import UserInputError
from sarcomakit.io.atomic import atomic_path, write_json
from sarcomakit.io.image import Geometry, array_to_image, read_image, write_image


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
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
