"""The interactive task: options, training samples, model-in-the-loop rounds, and a short training run end to end."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry, read_image
from sarcomakit.evaluation.metrics import dice
from sarcomakit.interactive.evaluate import InteractiveCase, evaluate_interactive
from sarcomakit.interactive.metrics import mean_curve
from sarcomakit.interactive.network_model import NetworkInteractiveModel
from sarcomakit.interactive.robot import RobotConfig, RobotUser
from sarcomakit.interactive.roi import Roi
from sarcomakit.interactive.session import InteractiveSession
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_case
from sarcomakit.runs.config import TrainConfig
from sarcomakit.runs.folder import RunFolder
from sarcomakit.tasks import build_task, task_options
from sarcomakit.tasks.interactive import InteractiveTask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_cohorts import write_tiny_cohort  # noqa: E402

TINY_NETWORK = {"channels": [8, 16, 32], "num_res_units": 1}


def tiny_config(**task_options: object) -> TrainConfig:
    return TrainConfig(task="interactive", task_options=task_options, patch_size=[16, 32, 32], batch_size=2,
                       augmentation="light", num_workers=0, network_options=TINY_NETWORK, device="cpu", seed=3)


def test_options_are_listed_and_checked() -> None:
    options = task_options("interactive")
    assert {"encoding", "single_channel", "intensity_augmentation", "model_in_the_loop", "validation_rounds",
            "initial_protocols", "perturbations"} <= set(options)
    assert "monotone" in options["intensity_augmentation"][1]
    task = build_task(TrainConfig(task="interactive", task_options={"single_channel": "true",
                                                                     "initial_protocols": "clicks"}))
    assert isinstance(task, InteractiveTask) and task.single_channel
    assert task.simulation.initial_protocols == ("clicks",)
    for bad, message in (({"encoding": "polar"}, "encoding"), ({"perturbations": ["melt"]}, "perturbations"),
                         ({"intensity_augmentation": "wild"}, "intensity"), ({"model_in_the_loop": 2}, "probability")):
        with pytest.raises(UserInputError, match=message):
            build_task(TrainConfig(task="interactive", task_options=bad))
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 0 and "interactive" in result.output and "single_channel" in result.output


@pytest.fixture(scope="module")
def cohort_and_plan(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("interactive_task")
    manifest = write_tiny_cohort(root / "cohort")
    plan = plan_cohort(manifest, root / "plan.json", show_progress=False)
    return root, manifest, plan


def test_training_samples_of_a_single_channel_network(cohort_and_plan) -> None:  # noqa: ANN001
    _, manifest, plan = cohort_and_plan
    cases = [preprocess_case(case, plan) for case in manifest.cases[:2]]
    config = tiny_config(single_channel=True)
    task = build_task(config)
    dataset = task.training_data(cases, plan, config, length=6)
    model = task.build_model(plan, config)
    for index in range(6):
        sample = dataset[index]
        assert sample["image"].shape == (1 + 3, 16, 32, 32) and sample["label"].shape == (1, 16, 32, 32)
        label = sample["label"][0].numpy() > 0
        assert label.sum() >= 4
        assert not (sample["positive"].numpy().astype(bool) & ~label).any()
        assert not (sample["negative"].numpy().astype(bool) & label).any()
        np.testing.assert_array_less(-1e-6, sample["image"][2:].numpy())  # mask and encodings in [0, 1]
    assert torch.equal(dataset[3]["image"], dataset[3]["image"])  # deterministic for (seed, epoch, index)
    with torch.no_grad():
        assert model(dataset[0]["image"][None]).shape == (1, 2, 16, 32, 32)
    multi = build_task(tiny_config())
    assert multi.build_model(plan, config).model[0].conv.unit0.conv.in_channels == len(plan.channels) + 3


def test_zoomed_patches_show_the_tumour_smaller_or_larger(cohort_and_plan) -> None:  # noqa: ANN001
    _, manifest, plan = cohort_and_plan
    cases = [preprocess_case(case, plan) for case in manifest.cases[:3]]
    sizes = {}
    for zoom in (0.5, 1.0):
        config = tiny_config(scale_range=[zoom, zoom], intensity_augmentation="none")
        dataset = build_task(config).training_data(cases, plan, config.model_copy(update={"augmentation": "none"}),
                                                   length=8)
        sizes[zoom] = np.mean([float(dataset[i]["label"].sum()) for i in range(8)])
        assert dataset[0]["image"].shape[1:] == (16, 32, 32)
    assert sizes[0.5] < sizes[1.0] / 3  # half the size: an eighth of the volume when the tumour fits
    with pytest.raises(UserInputError, match="scale_range"):
        build_task(tiny_config(scale_range=[2.0, 1.0]))


def test_model_in_the_loop_corrects_the_networks_own_answer(cohort_and_plan) -> None:  # noqa: ANN001
    _, manifest, plan = cohort_and_plan
    cases = [preprocess_case(case, plan) for case in manifest.cases[:2]]
    config = tiny_config(model_in_the_loop=1.0, encoding="binary", initial_fraction=1.0)
    task = build_task(config)
    batch = torch.utils.data.default_collate([task.training_data(cases, plan, config, 2)[i] for i in range(2)])

    class FindsNothing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
            logits[:, 0] = 1.0
            return logits

    objective = task.objective(cases, plan, config)
    n = len(plan.channels)
    updated = objective.correct_own_answer(FindsNothing(), batch["image"], batch["label"], batch["positive"],
                                           batch["negative"], torch.device("cpu"))
    assert torch.equal(updated[:, :n], batch["image"][:, :n])  # the image is untouched
    assert not updated[:, n].any()  # the previous mask is the network's (empty) answer
    for b in range(2):
        label = batch["label"][b, 0].numpy() > 0
        added = (updated[b, n + 1].numpy() > 0) & ~(batch["positive"][b].numpy() > 0)
        assert added.any() and not (added & ~label).any()  # a positive correction on the missed tumour
    result = objective(torch.nn.Conv3d(n + 3, 2, 1), batch, torch.device("cpu"))
    assert result.parts["model_in_the_loop"] == 1.0 and torch.isfinite(result.total)


@pytest.fixture(scope="module")
def trained_run(cohort_and_plan):  # noqa: ANN001, ANN201
    """A tiny interactive run trained through ``sarcomakit interactive train`` (90 steps, validated at the end)."""
    root, manifest, _ = cohort_and_plan
    run_dir = root / "run"
    result = CliRunner().invoke(app, [
        "interactive", "train", str(manifest.source), "--plan", str(root / "plan.json"), "--out", str(run_dir),
        "--epochs", "6", "--iterations", "15", "--validate-every", "6", "--patch-size", "16,32,32",
        "--batch-size", "2", "--optimizer", "adamw", "--lr", "3e-3", "--augmentation", "light", "--workers", "0",
        "--folds", "3", "--device", "cpu", "--seed", "0", "--network-option", "channels=[8,16,32]",
        "--network-option", "num_res_units=1", "--task-option", "validation_rounds=3",
        "--task-option", "scale_range=[1,1]", "--task-option", "model_in_the_loop=0.5"])
    assert result.exit_code == 0, result.output
    return run_dir


@pytest.mark.slow
def test_a_short_training_run_learns_to_follow_prompts_and_corrections(trained_run: Path) -> None:
    history = pd.read_csv(trained_run / "fold_0" / "history.csv")
    assert {"val_dice", "val_dice_round1", "val_dice_auc"} <= set(history.columns)
    assert history.val_dice.iloc[-1] > 0.8 and list(history.dropna(subset=["val_dice"]).epoch) == [0, 5]
    config = TrainConfig.load(trained_run / "config.json")
    assert config.task == "interactive" and config.validate_every == 6
    task = build_task(config)
    model = NetworkInteractiveModel.from_run(trained_run).grid_model
    cases = task.validation_cases([PreprocessedCase.load(trained_run / "preprocessed", case_id)
                                   for split in RunFolder.open(trained_run).splits()[:1] for part in split.values()
                                   for case_id in part])
    curves = {}
    for name, playable in (("image", cases), ("prompts only", [
            InteractiveCase(c.case_id, np.zeros_like(c.image), c.reference, c.spacing) for c in cases])):
        evaluation = evaluate_interactive({"network": model}, playable, n_rounds=5, robot=RobotConfig(), seed=0)
        curves[name] = mean_curve([record.dice for record in evaluation.records])
    # on the images, five rounds end at least where the first began, and high
    assert curves["image"][-1] >= curves["image"][0] - 1e-6 and curves["image"][-1] > 0.85, curves
    # with the image blanked out, only the prompts tell where the tumour is: each round's corrections add to it
    assert curves["prompts only"][-1] > curves["prompts only"][0] + 0.04, curves


@pytest.mark.slow
def test_a_trained_run_segments_an_image_in_its_own_geometry(trained_run: Path, cohort_and_plan) -> None:  # noqa: ANN001
    _, manifest, _ = cohort_and_plan
    model = NetworkInteractiveModel.from_run(trained_run)
    assert model.n_channels == 2
    case = manifest.cases[1]  # a flipped direction and 2-3 mm slices: not the plan's grid
    images = [read_image(case.images[ch], sitk.sitkFloat32) for ch in manifest.channels]
    reference = sitk.GetArrayFromImage(read_image(case.label)) > 0
    session = InteractiveSession(model, sitk.Compose(images))
    robot = RobotUser(RobotConfig(plane="axial"), seed=0)
    for prompt in robot.initial_prompts(reference):
        session.add_prompt(prompt)
    mask = session.predict()
    assert mask.shape == reference.shape and dice(mask, reference) > 0.4
    assert Geometry.of(session.mask_image()).matches(Geometry.of(images[0]), atol=1e-6)
    from sarcomakit.inference.predictor import predict

    outcome = predict(trained_run, manifest.source, trained_run.parent / "predictions")  # no prompts: refused
    assert not outcome.results and all("not on its own" in m for m in outcome.failures.values())


@pytest.mark.slow
def test_evaluate_compares_a_trained_run_with_the_random_walker(trained_run: Path, cohort_and_plan,  # noqa: ANN001
                                                                 tmp_path: Path) -> None:
    _, manifest, _ = cohort_and_plan
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(app, ["interactive", "evaluate", f"{trained_run},random_walker", str(manifest.source),
                                      "--rounds", "3", "--out", str(out), "--cases", "case00,case01,case02"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(out / "summary.csv").set_index("method")
    assert set(summary.index) == {"run", "random_walker"}
    assert (summary.n_cases == 3).all() and summary.latency_median_s.gt(0).all()
    rounds = pd.read_csv(out / "rounds.csv")
    assert len(rounds) == 2 * 3 * 3
    assert (out / "dice_vs_rounds.png").stat().st_size > 1000


@pytest.mark.slow
def test_an_exported_run_predicts_the_same_and_seeds_fine_tuning(trained_run: Path, cohort_and_plan,  # noqa: ANN001
                                                                  tmp_path: Path) -> None:
    root, manifest, plan = cohort_and_plan
    notes = tmp_path / "notes.md"
    notes.write_text("# how it was made\n")
    shipped = tmp_path / "shipped"
    result = CliRunner().invoke(app, ["interactive", "export", str(trained_run), str(shipped), "--notes", str(notes)])
    assert result.exit_code == 0, result.output
    weights = shipped / "fold_0" / "checkpoint_best.pt"
    assert weights.stat().st_size < (trained_run / "fold_0" / "checkpoint_best.pt").stat().st_size / 2
    assert (shipped / "RECIPE.md").read_text(encoding="utf-8") == "# how it was made\n"
    case = preprocess_case(manifest.cases[0], plan)
    image, reference = np.asarray(case.data), np.asarray(case.label) > 0
    prompts = RobotUser(RobotConfig(plane="axial"), seed=1).initial_prompts(reference)
    roi = Roi.of_image(reference.shape)
    masks = [NetworkInteractiveModel.from_run(folder).grid_model.predict(image, prompts, None, roi,
                                                                         spacing=plan.target_spacing)
             for folder in (trained_run, shipped)]
    assert np.array_equal(masks[0], masks[1])

    config = TrainConfig.load(trained_run / "config.json")
    tuned = config.model_copy(update={"task_options": {**config.task_options, "initial_weights": str(shipped)}})
    network = build_task(tuned).build_model(plan, tuned)
    exported = torch.load(weights, weights_only=True)["model"]
    assert all(torch.equal(value, exported[name]) for name, value in network.state_dict().items())
    wider = tuned.model_copy(update={"network_options": {"channels": [8, 16, 64], "num_res_units": 1}})
    with pytest.raises(UserInputError, match="do not fit this network"):
        build_task(wider).build_model(plan, wider)
