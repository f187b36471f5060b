"""Rerunning the demo in its folder: the same arguments resume, other ones are refused or start afresh."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from sarcomakit import demo
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Manifest
from sarcomakit.evaluation.comparison import compare_methods
from sarcomakit.planning.plan import Plan
from sarcomakit.runs.config import TrainConfig


def test_inputs_record_the_split() -> None:
    inputs = demo.demo_inputs(cases=10, seed=3, test_fraction=0.4)
    assert inputs["train_ids"] == [f"STS_{i:03d}" for i in range(6)]
    assert inputs["held_out_ids"] == [f"STS_{i:03d}" for i in range(6, 10)]


def test_other_cases_or_seed_are_refused_naming_what_differs(tmp_path: Path) -> None:
    demo.claim_demo_folder(tmp_path, demo.demo_inputs(50, 0, 0.4))
    demo.claim_demo_folder(tmp_path, demo.demo_inputs(50, 0, 0.4))  # the same arguments: fine
    with pytest.raises(UserInputError) as info:
        demo.claim_demo_folder(tmp_path, demo.demo_inputs(30, 0, 0.4))
    message = str(info.value)
    assert message.startswith(f"{tmp_path}: holds a demo built from other inputs (cases: 50 then, 30 now; ")
    # with 30 cases, 12 of the old training cases would be held out
    assert "12 of the held-out cases were training cases (STS_018, STS_019, STS_020, ...)" in message
    assert message.endswith("Fix: use a new --out folder, or --overwrite to start fresh.") and "\n" not in message
    with pytest.raises(UserInputError, match=r"seed: 0 then, 1 now"):
        demo.claim_demo_folder(tmp_path, demo.demo_inputs(50, 1, 0.4))
    with pytest.raises(UserInputError, match=r"test_fraction: 0.4 then, 0.2 now"):
        demo.claim_demo_folder(tmp_path, demo.demo_inputs(50, 0, 0.2))
    assert json.loads((tmp_path / demo.PROVENANCE).read_text("utf-8"))["cases"] == 50  # the refusals changed nothing


def test_results_without_a_record_are_refused(tmp_path: Path) -> None:
    (tmp_path / "run" / "fold_0").mkdir(parents=True)  # a demo folder from before records existed
    with pytest.raises(UserInputError, match="do not record the inputs they were built from"):
        demo.claim_demo_folder(tmp_path, demo.demo_inputs(50, 0, 0.4))


def test_overwrite_removes_what_was_built_from_other_inputs(tmp_path: Path) -> None:
    demo.claim_demo_folder(tmp_path, demo.demo_inputs(50, 0, 0.4))
    for name in ("plan.json", "fingerprint.json", "train_manifest.csv", "report.html", "demo_summary.json",
                 "run/fold_0/x.pt", "heldout/predictions/STS_040.nii.gz", "cohort/manifest.json", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("old")
    demo.claim_demo_folder(tmp_path, demo.demo_inputs(30, 0, 0.4), overwrite=True)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["cohort/manifest.json", "notes.txt", demo.PROVENANCE]  # the cohort is the synthesiser's
    assert json.loads((tmp_path / demo.PROVENANCE).read_text(encoding="utf-8"))["cases"] == 30


def test_run_demo_refuses_before_touching_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demo.claim_demo_folder(tmp_path, demo.demo_inputs(8, 0, 0.4))
    (tmp_path / "plan.json").write_text("the old plan")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise AssertionError("the demo went on with other inputs")

    monkeypatch.setattr(demo, "make_synthetic_cohort", unreachable)
    with pytest.raises(UserInputError, match="cases: 8 then, 6 now"):
        demo.run_demo(tmp_path, cases=6, epochs=1, device="cpu")
    assert (tmp_path / "plan.json").read_text(encoding="utf-8") == "the old plan"


def _tiny_config(plan: Plan, device: str, epochs: int | None, seed: int) -> TrainConfig:
    """The demo's multi-task training, shrunk to seconds."""
    return TrainConfig(task="multitask", task_options={"weighting": "uncertainty"}, epochs=epochs or 1,
                       iterations_per_epoch=1, patch_size=[16, 32, 32], batch_size=2, optimizer="adamw",
                       augmentation="none", checkpoint_selection="last", n_folds=2, seed=seed, device=device,
                       num_workers=0, sw_overlap=0.0, network_options={"channels": [4, 8, 16], "num_res_units": 1})


@pytest.mark.slow
def test_demo_resumes_with_the_same_arguments_and_starts_afresh_with_overwrite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "demo_config", _tiny_config)
    monkeypatch.setattr(demo, "compare_methods", partial(compare_methods, n_bootstrap=50))
    monkeypatch.setattr(demo, "write_multitask_report", lambda source, out_path, **options: Path(out_path))
    out = tmp_path / "demo"
    demo.run_demo(out, cases=6, epochs=1, device="cpu")
    prediction = out / "heldout" / "predictions" / "STS_005.nii.gz"
    history = out / "run" / "fold_0" / "history.csv"
    first_epoch = history.read_text(encoding="utf-8").splitlines()[1]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "plan.json", out / "cohort" / "images" / "STS_000_T1.nii.gz")}
    predicted_at = prediction.stat().st_mtime_ns

    demo.run_demo(out, cases=6, epochs=2, device="cpu")  # the same inputs, one more epoch
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # cohort and plan reused
    epochs = history.read_text("utf-8").splitlines()
    assert epochs[1:] == [first_epoch, epochs[2]]  # resumed
    assert prediction.stat().st_mtime_ns != predicted_at  # predicted again with the new checkpoint
    redone_at = prediction.stat().st_mtime_ns

    # 5 cases hold out STS_003 and STS_004: the plan and the model of the 6-case demo trained on STS_003
    with pytest.raises(UserInputError, match=r"cases: 6 then, 5 now; 1 of the held-out cases were training cases "
                                             r"\(STS_003\)"):
        demo.run_demo(out, cases=5, epochs=1, device="cpu")
    assert prediction.stat().st_mtime_ns == redone_at

    demo.run_demo(out, cases=5, epochs=1, device="cpu", overwrite=True)
    train_ids = Manifest.load(out / "train_manifest.csv").case_ids
    assert train_ids == ["STS_000", "STS_001", "STS_002"]
    splits = json.loads((out / "run" / "splits.json").read_text(encoding="utf-8"))
    assert sorted(cid for split in splits for cid in split["val"]) == train_ids
    assert len(history.read_text(encoding="utf-8").splitlines()) == 2  # a fresh run of one epoch
    fingerprint = json.loads((out / Plan.load(out / "plan.json").fingerprint_file).read_text(encoding="utf-8"))
    assert sorted(case["case_id"] for case in fingerprint["cases"]) == train_ids  # planned on training cases only
    assert sorted(p.name for p in (out / "heldout" / "predictions").glob("*.nii.gz")) == \
        ["STS_003.nii.gz", "STS_004.nii.gz"]
