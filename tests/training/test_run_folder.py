"""The run folder records what it was built from, and refuses or clears a rerun with other inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import read_image, write_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.runs.folder import RunFolder
from sarcomakit.training.api import train

CONFIG = TrainConfig(epochs=1, iterations_per_epoch=1, patch_size=[16, 32, 32], batch_size=2, optimizer="adamw",
                     augmentation="none", num_workers=0, n_folds=2, validate_every=1,
                     network_options={"channels": [4, 8, 16], "num_res_units": 1}, device="cpu")


@pytest.fixture
def plan(tiny_cohort: Manifest, tmp_path: Path) -> Plan:
    return plan_cohort(tiny_cohort, tmp_path / "plan.json", show_progress=False)


def _refusal(run_dir: Path, manifest: Manifest, plan: Plan, config: TrainConfig = CONFIG) -> str:
    with pytest.raises(UserInputError) as info:
        RunFolder.prepare(run_dir, manifest, plan, config)
    message = str(info.value)
    assert message.startswith(f"{run_dir}: was built from other inputs (") and "\n" not in message
    assert message.endswith("Fix: use a new --out folder, or --overwrite to start fresh.")
    return message


def test_other_cases_are_refused_and_the_splits_kept(tiny_cohort: Manifest, plan: Plan, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run = RunFolder.prepare(run_dir, tiny_cohort.subset(tiny_cohort.case_ids[:4]), plan, CONFIG)
    splits = run.splits_path.read_text(encoding="utf-8")
    record = json.loads(run.provenance_path.read_text(encoding="utf-8"))
    assert record["case_ids"] == ["case00", "case01", "case02", "case03"] and len(record["manifest_sha256"]) == 64
    assert set(record["cases"]["case00"]["files"]) == {"T1", "T2", "label"}

    message = _refusal(run_dir, tiny_cohort.subset(["case00", "case01", "case04", "case05"]), plan)
    assert "cases: 4 cases then, 4 now: 2 added (case04, case05), 2 removed (case02, case03)" in message
    assert run.splits_path.read_text(encoding="utf-8") == splits  # nothing was touched


def test_changed_images_masks_and_clinical_fields_are_refused(tiny_cohort: Manifest, plan: Plan,
                                                              tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)
    case = tiny_cohort["case02"]
    image = read_image(case.images["T1"])
    write_image(sitk.Cast(image, sitk.sitkFloat32) * 2.0, case.images["T1"])  # same id, same path, new content
    label = sitk.GetArrayFromImage(read_image(case.label))
    label[:, :, 14:18] = 0  # through the tumour
    relabelled = sitk.GetImageFromArray(label)
    relabelled.CopyInformation(read_image(case.label))
    write_image(relabelled, tiny_cohort["case04"].label)
    tiny_cohort["case05"].grade = "high" if tiny_cohort["case05"].grade != "high" else "low"
    message = _refusal(run_dir, tiny_cohort, plan)
    assert "3 case(s) changed since: case02 (T1), case04 (label), case05 (clinical fields)" in message


def test_other_plan_or_training_options_are_refused(tiny_cohort: Manifest, plan: Plan, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)
    other_plan = plan.model_copy(update={"target_spacing": [s * 1.5 for s in plan.target_spacing]})
    assert "another plan" in _refusal(run_dir, tiny_cohort, other_plan)
    message = _refusal(run_dir, tiny_cohort, plan, CONFIG.updated(learning_rate=0.5, seed=3))
    assert "other training options (learning_rate: 0.01 then, 0.5 now; seed: 0 then, 3 now)" in message


def test_same_inputs_reopen_even_from_a_moved_copy(tiny_cohort: Manifest, plan: Plan, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)
    # more epochs, another device or other loaders continue the same run
    RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG.updated(epochs=50, device="auto", num_workers=2))
    moved = tmp_path / "moved"
    shutil.copytree(tiny_cohort.source.parent, moved)  # new paths and file times, same content
    RunFolder.prepare(run_dir, Manifest.load(moved / "manifest.csv"), plan, CONFIG)
    record = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8"))
    assert record["cases"]["case00"]["files"]["T1"]["path"].startswith(str(moved.resolve()))


def test_overwrite_clears_the_old_run_and_starts_fresh(tiny_cohort: Manifest, plan: Plan, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunFolder.prepare(run_dir, tiny_cohort.subset(tiny_cohort.case_ids[:4]), plan, CONFIG)
    for stale in ("fold_0/checkpoint_last.pt", "preprocessed/case00_data.npy", "oof_predictions.csv"):
        (run_dir / stale).parent.mkdir(exist_ok=True)
        (run_dir / stale).write_bytes(b"from the earlier run")
    (run_dir / "notes.txt").write_text("the user's own file")
    others = tiny_cohort.subset(tiny_cohort.case_ids[2:])
    run = RunFolder.prepare(run_dir, others, plan, CONFIG, overwrite=True)
    assert not (run_dir / "fold_0").exists() and not (run_dir / "preprocessed").exists()
    assert not (run_dir / "oof_predictions.csv").exists() and (run_dir / "notes.txt").is_file()
    assert sorted(cid for split in run.splits() for cid in split["val"]) == others.case_ids
    assert json.loads(run.provenance_path.read_text(encoding="utf-8"))["case_ids"] == others.case_ids
    assert Manifest.load(run_dir / "manifest.json").case_ids == others.case_ids


def test_run_folder_without_record_is_checked_by_its_splits(tiny_cohort: Manifest, plan: Plan,
                                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run = RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)
    run.provenance_path.unlink()  # as written before records existed
    message = _refusal(run_dir, tiny_cohort.subset(tiny_cohort.case_ids[:5]), plan)
    assert "6 cases then, 5 now: 1 removed (case05)" in message
    RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)
    assert run.provenance_path.is_file()  # adopted: the record is written
    run.provenance_path.unlink()
    run.splits_path.unlink()
    (run_dir / "fold_0").mkdir()
    with pytest.raises(UserInputError, match="holds trained folds but no record of the cases"):
        RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)


def test_resume_with_other_cases_is_refused_before_any_work(tiny_cohort: Manifest, plan: Plan,
                                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunFolder.prepare(run_dir, tiny_cohort.subset(tiny_cohort.case_ids[:4]), plan, CONFIG)
    with pytest.raises(UserInputError, match="was built from other inputs"):
        train(tiny_cohort, plan, run_dir, config=CONFIG, resume=True)
    assert not (run_dir / "preprocessed").exists() and not (run_dir / "fold_0").exists()


def test_train_overwrite_starts_a_fresh_run(tiny_cohort: Manifest, plan: Plan, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = tiny_cohort.subset(tiny_cohort.case_ids[:4])
    train(first, plan, run_dir, config=CONFIG)
    old_checkpoint = (run_dir / "fold_0" / "checkpoint_last.pt").read_bytes()
    train(tiny_cohort, plan, run_dir, config=CONFIG, overwrite=True)
    run = RunFolder.open(run_dir)
    assert sorted(cid for split in run.splits() for cid in split["val"]) == tiny_cohort.case_ids
    assert (run_dir / "fold_0" / "checkpoint_last.pt").read_bytes() != old_checkpoint
    assert sorted(p.name for p in (run_dir / "preprocessed").glob("*.json") if p.name != "plan.json") == \
        [f"{cid}.json" for cid in tiny_cohort.case_ids]


def test_cli_train_refuses_in_one_line_and_names_the_fix(tiny_cohort: Manifest, plan: Plan, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunFolder.prepare(run_dir, tiny_cohort.subset(tiny_cohort.case_ids[:4]), plan, CONFIG)
    result = CliRunner().invoke(app, ["train", str(tiny_cohort.source), "--plan", str(tmp_path / "plan.json"),
                                      "--out", str(run_dir), "--folds", "2", "--resume", "--device", "cpu"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "was built from other inputs" in lines[0] and "--overwrite" in lines[0]


def test_unreadable_record_is_a_user_error(tiny_cohort: Manifest, plan: Plan, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)
    (run_dir / "provenance.json").write_text("{not json")
    with pytest.raises(UserInputError, match="provenance.json: cannot be read"):
        RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG)
    assert len(RunFolder.prepare(run_dir, tiny_cohort, plan, CONFIG, overwrite=True).splits()) == 2
