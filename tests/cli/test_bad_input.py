"""A corpus of bad input fails loudly in every radiology command: one clear line, a non-zero exit, no traceback.

The corpus: a truncated NIfTI, a volume with NaN voxels, a duplicated case id, channels of a case on
different grids, and a folder where an image file belongs. Each damages one case (``case01``) of an
otherwise good cohort, so that the cohort commands also show that the other cases still finish.
Exit status: 2 when the problem is found before any work (the duplicate id, at loading), 1 when a case
failed (CohortResult.exit_code).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.io.image import write_image
from sarcomakit.data.manifest import Case, Manifest

runner = CliRunner()
BAD = "case01"
KINDS = ("truncated", "nan", "duplicate", "grids", "folder")
# what the one line naming the problem must say (besides the case or file)
EXPECTED = {"truncated": "is truncated or corrupt", "nan": "NaN and", "duplicate": "case01 (2x)",
            "grids": "channel T2 is not on the grid of channel T1: spacing", "folder": "is a folder, not an image file"}
TRAIN_OPTIONS = ("--fold", "0", "--folds", "2", "--epochs", "1", "--iterations", "1", "--batch-size", "1",
                 "--workers", "0", "--augmentation", "none")


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def write_cohort(root: Path, n_cases: int = 4, shape: tuple[int, int, int] = (8, 24, 24)) -> Path:
    """Cases with a bright ellipsoid in T1 and a dark one in T2, labelled; returns the manifest path."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    tumour = (z / 0.6) ** 2 + (y / 0.4) ** 2 + (x / 0.5) ** 2 <= 1
    cases = []
    for i in range(n_cases):
        arrays = {"T1": 100 + 10 * rng.standard_normal(shape) + 50 * tumour,
                  "T2": 60 + 10 * rng.standard_normal(shape) - 30 * tumour, "label": tumour}
        paths = {}
        for name, array in arrays.items():
            image = sitk.GetImageFromArray(array.astype(np.uint8 if name == "label" else np.float32))
            image.SetSpacing((1.0, 1.0, 2.0))
            paths[name] = write_image(image, root / ("labels" if name == "label" else "images")
                                      / f"case{i:02d}{'' if name == 'label' else '_' + name}.nii.gz")
        cases.append(Case(f"case{i:02d}", {"T1": paths["T1"], "T2": paths["T2"]}, label=paths["label"]))
    return Manifest(channels=["T1", "T2"], cases=cases).save(root / "manifest.csv")


def assert_fails_clearly(result, kind: str, *, where: str = BAD) -> None:
    """Non-zero exit (2 before any work, 1 after a case failed), one line naming the problem, no traceback."""
    output = result.output
    assert result.exit_code == (2 if kind == "duplicate" else 1), output
    assert "Traceback" not in output and "Geometry(" not in output, output
    lines = [line for line in output.splitlines() if EXPECTED[kind] in line]
    assert len(lines) == 1, output
    assert where in lines[0] and lines[0].count("Fix:") == 1, lines[0]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good 4-case cohort, its plan, and 'predictions' that are copies of its labels."""
    root = tmp_path_factory.mktemp("good")
    manifest = write_cohort(root / "cohort")
    plan = root / "plan.json"
    assert invoke("plan", manifest, "--out", plan).exit_code == 0
    predictions = root / "predictions"
    predictions.mkdir()
    for case in Manifest.load(manifest).cases:
        shutil.copy(case.label, predictions / f"{case.case_id}.nii.gz")
    return {"cohort": manifest.parent, "plan": plan, "predictions": predictions}


def bad_cohort(good_cohort: Path, folder: Path, kind: str, target: str = "T1") -> Path:
    """A copy of the good cohort with one kind of damage to ``target`` (a channel or "label") of case01."""
    shutil.copytree(good_cohort, folder)
    manifest = Manifest.load(folder / "manifest.csv")
    case = manifest[BAD]
    path = case.label if target == "label" else case.images[target]
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "nan":
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        array = sitk.GetArrayFromImage(image)
        array[2, 3, 4] = np.nan
        nan_image = sitk.GetImageFromArray(array)
        nan_image.CopyInformation(image)
        write_image(nan_image, path)
    elif kind == "grids":  # T2 one slice thicker than T1: same voxels, another physical grid
        image = sitk.ReadImage(str(case.images["T2"]))
        x, y, z = image.GetSpacing()
        image.SetSpacing((x, y, z * 1.5))
        write_image(image, case.images["T2"])
    elif kind == "folder":
        (folder / "dicom_export").mkdir()
        if target == "label":
            case.label = folder / "dicom_export"
        else:
            case.images[target] = folder / "dicom_export"
        manifest.save(folder / "manifest.csv")
    elif kind == "duplicate":
        manifest.cases.append(case)
        manifest.save(folder / "manifest.csv")
    return folder / "manifest.csv"


@pytest.mark.parametrize("kind", KINDS)
def test_plan(good, tmp_path: Path, kind: str) -> None:
    manifest = bad_cohort(good["cohort"], tmp_path / "cohort", kind)
    result = invoke("plan", manifest, "--out", tmp_path / "plan.json")
    assert_fails_clearly(result, kind)
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_preprocess(good, tmp_path: Path, kind: str) -> None:
    manifest = bad_cohort(good["cohort"], tmp_path / "cohort", kind)
    out = tmp_path / "preprocessed"
    result = invoke("preprocess", manifest, "--plan", good["plan"], "--out", out)
    assert_fails_clearly(result, kind)
    if kind != "duplicate":  # the other cases were finished first
        assert "3 case(s) done" in result.output and len(list(out.glob("case*.json"))) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate(good, tmp_path: Path, kind: str) -> None:
    """Evaluation reads labels (damaged here) and checks the channels' headers (the grid case)."""
    manifest = bad_cohort(good["cohort"], tmp_path / "cohort", kind, target="T2" if kind == "grids" else "label")
    result = invoke("evaluate", good["predictions"], manifest, "--out", tmp_path / "evaluation", "--bootstrap", "100")
    assert_fails_clearly(result, kind)


@pytest.fixture(scope="module")
def trained_run(good, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    result = invoke("train", good["cohort"] / "manifest.csv", "--plan", good["plan"], "--out", run, *TRAIN_OPTIONS)
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_predict(trained_run, good, tmp_path: Path, kind: str) -> None:
    manifest = bad_cohort(good["cohort"], tmp_path / "cohort", kind)
    out = tmp_path / "masks"
    result = invoke("predict", trained_run, manifest, out, "--device", "cpu")
    assert_fails_clearly(result, kind)
    if kind != "duplicate":
        assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case00.nii.gz", "case02.nii.gz", "case03.nii.gz"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_train(good, tmp_path: Path, kind: str) -> None:
    manifest = bad_cohort(good["cohort"], tmp_path / "cohort", kind)
    result = invoke("train", manifest, "--plan", good["plan"], "--out", tmp_path / "run", *TRAIN_OPTIONS)
    assert_fails_clearly(result, kind)


@pytest.mark.parametrize("command", ["plan", "preprocess", "evaluate"])
def test_folder_given_for_the_manifest_says_so(good, tmp_path: Path, command: str) -> None:
    cohort = good["cohort"]
    args = {"plan": ("plan", cohort), "preprocess": ("preprocess", cohort, "--plan", good["plan"], "--out", tmp_path),
            "evaluate": ("evaluate", good["predictions"], cohort)}[command]
    result = invoke(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if "is a folder, not a manifest file" in line]
    assert f"give {cohort / 'manifest.csv'}" in line


def test_folder_given_for_the_plan_says_so(good, tmp_path: Path) -> None:
    result = invoke("preprocess", good["cohort"] / "manifest.csv", "--plan", good["plan"].parent, "--out", tmp_path)
    assert result.exit_code == 2 and "is a folder, not a plan file" in result.output
    assert f"give {good['plan']}" in result.output


@pytest.mark.parametrize("command", [["predict", "RUN", "SRC", "OUT"], ["predict-io", "SRC", "OUT", "--model", "RUN"],
                                     ["export", "bundle", "RUN", "OUT"]])
def test_a_bad_fold_or_checkpoint_is_one_line_before_anything_is_read(tmp_path: Path, command: list[str]) -> None:
    args = [str(tmp_path / a) if a in ("RUN", "SRC", "OUT") else a for a in command]
    for extra, named in ((["--folds", "0,x"], "--folds"), (["--checkpoint", "newest"], "checkpoint")):
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 2 and named in result.output and "Traceback" not in result.output
    assert not (tmp_path / "OUT").exists()
