"""The cohort manifest contract: CSV and JSON forms, relative paths, clinical fields."""

from pathlib import Path

import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Case, Manifest


def _manifest(root: Path) -> Manifest:
    cases = [
        Case("A", {"T1": root / "img" / "A_T1.nii.gz", "T2FS": root / "img" / "A_T2FS.nii.gz"},
             label=root / "lab" / "A.nii.gz", grade="high", survival_time=400.0, event=1, site="s1", fold=0,
             extra={"age": "63"}),
        Case("B", {"T1": root / "img" / "B_T1.nii.gz", "T2FS": root / "img" / "B_T2FS.nii.gz"}),
    ]
    return Manifest(channels=["T1", "T2FS"], cases=cases, labels={"background": 0, "tumour": 1, "oedema": 2})


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    original = _manifest(tmp_path)
    path = original.save(tmp_path / f"manifest{suffix}")
    loaded = Manifest.load(path)
    assert loaded.channels == ["T1", "T2FS"]
    assert loaded.labels == {"background": 0, "tumour": 1, "oedema": 2}
    a, b = loaded["A"], loaded["B"]
    assert a.images["T2FS"] == (tmp_path / "img" / "A_T2FS.nii.gz").resolve()
    assert (a.grade, a.survival_time, a.event, a.site, a.fold) == ("high", 400.0, 1, "s1", 0)
    assert str(a.extra["age"]) == "63"
    assert b.label is None and b.grade is None and b.event is None


def test_paths_are_written_relative_so_the_folder_can_move(tmp_path: Path) -> None:
    path = _manifest(tmp_path).save(tmp_path / "manifest.csv")
    text = path.read_text(encoding="utf-8")
    assert "img/A_T1.nii.gz" in text and str(tmp_path) not in text
    moved = tmp_path.parent / (tmp_path.name + "_moved")
    tmp_path.rename(moved)
    assert Manifest.load(moved / "manifest.csv")["A"].label == (moved / "lab" / "A.nii.gz").resolve()


def test_invalid_clinical_values_are_kept_for_validation(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("case_id,image_T1,grade,survival_time,event,fold\nX,x.nii.gz,G5,-,yes,1.5\n")
    case = Manifest.load(csv)["X"]
    assert case.grade is None and case.survival_time is None and case.event is None and case.fold is None
    assert case.invalid_fields == {"grade": "G5", "survival_time": "-", "event": "yes", "fold": "1.5"}


def test_grade_is_case_insensitive(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("case_id,image_CT,grade\nX,x.nii.gz,High\n")
    assert Manifest.load(csv)["X"].grade == "high"


def test_user_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="manifest not found"):
        Manifest.load(tmp_path / "none.csv")
    no_channels = tmp_path / "m.csv"
    no_channels.write_text("case_id,label\nX,x.nii.gz\n")
    with pytest.raises(UserInputError, match="image_<CHANNEL>") as info:
        Manifest.load(no_channels)
    assert str(no_channels) in str(info.value)
    broken = tmp_path / "m.json"
    broken.write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        Manifest.load(broken)


def test_subset_keeps_order_and_rejects_unknown_ids(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path)
    assert manifest.subset(["B", "A"]).case_ids == ["B", "A"]
    with pytest.raises(KeyError):
        manifest.subset(["Z"])


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_duplicate_case_ids_are_refused_with_the_ids_listed(tmp_path: Path, suffix: str) -> None:
    manifest = _manifest(tmp_path)
    manifest.cases += [manifest.cases[0], manifest.cases[1], manifest.cases[0]]
    path = manifest.save(tmp_path / f"manifest{suffix}")
    with pytest.raises(UserInputError, match="more than once: A \\(3x\\), B \\(2x\\)") as info:
        Manifest.load(path)
    assert str(info.value).startswith(str(path)) and str(info.value).count("Fix:") == 1
    kept = Manifest.load(path, allow_duplicate_ids=True)  # for validate, which lists every problem at once
    assert kept.case_ids == ["A", "B", "A", "B", "A"] and kept.duplicate_ids() == {"A": 3, "B": 2}


def test_folder_or_image_given_for_a_manifest_says_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="is a folder, not a manifest file"):
        Manifest.load(tmp_path)
    path = _manifest(tmp_path).save(tmp_path / "manifest.csv")
    with pytest.raises(UserInputError, match="is a folder, not a manifest file") as info:
        Manifest.load(tmp_path)
    assert f"give {path}" in str(info.value)
    image = tmp_path / "scan.nii.gz"
    image.write_bytes(b"\x1f\x8b")
    with pytest.raises(UserInputError, match="is an image, not a manifest"):
        Manifest.load(image)
