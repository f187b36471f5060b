"""Fine-tuning schedule (pretrained parts frozen, then linear warm-up) and pretrain -> fine-tune end to end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.data.manifest import Manifest
from sarcomakit.models.pretrained import network_part
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import LossOutput, Objective
from sarcomakit.training.api import train
from sarcomakit.training.finetuning import FineTuningSchedule, resolved_warmup_epochs
from sarcomakit.training.trainer import Callback, Trainer

TINY = {"channels": [8, 16, 32], "num_res_units": 1}


class _Squared(Objective):
    def forward(self, model: nn.Module, batch: torch.Tensor, device: torch.device) -> LossOutput:
        return LossOutput((model(batch) ** 2).mean())


class _Rates(Callback):
    """The learning rate each step ran with, per group."""

    def __init__(self) -> None:
        self.rates: list[tuple[float, float]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.optimizer = trainer.optimizer

    def on_step_end(self, trainer: Trainer, loss: float) -> None:
        self.rates.append(tuple(g["lr"] for g in trainer.optimizer.param_groups))  # type: ignore[arg-type]


def test_pretrained_group_is_frozen_then_every_group_warms_up_linearly() -> None:
    torch.manual_seed(0)
    pretrained, new = nn.Linear(3, 3), nn.Linear(3, 1)
    model = nn.Sequential(pretrained, new)
    optimizer = torch.optim.SGD([{"params": pretrained.parameters(), "name": "pretrained"},
                                 {"params": new.parameters(), "name": "new"}], lr=0.1, momentum=0.9,
                                weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0 - 0.1 * epoch)
    rates = _Rates()
    frozen_weight = pretrained.weight.detach().clone()
    snapshots = []

    class Snapshot(Callback):
        def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
            snapshots.append(pretrained.weight.detach().clone())

    batches = [torch.randn(4, 3) for _ in range(3)]
    trainer = Trainer(model, _Squared(), optimizer, batches, device=torch.device("cpu"), epochs=4, scheduler=scheduler,
                      callbacks=[rates, FineTuningSchedule(freeze_epochs=1, warmup_epochs=2, steps_per_epoch=3),
                                 Snapshot()])
    trainer.fit()
    poly = [1.0, 0.9, 0.8, 0.7]
    expected_new = [0.1 * poly[e] * min(1.0, (e * 3 + s + 1) / 6) for e in range(4) for s in range(3)]
    expected_pretrained = [0.0] * 3 + [0.1 * poly[e] * min(1.0, ((e - 1) * 3 + s + 1) / 6)
                                       for e in range(1, 4) for s in range(3)]
    assert [r[1] for r in rates.rates] == pytest.approx(expected_new)
    assert [r[0] for r in rates.rates] == pytest.approx(expected_pretrained)
    assert torch.equal(snapshots[0], frozen_weight)  # frozen despite momentum and weight decay
    assert not torch.equal(snapshots[1], frozen_weight)


def test_default_warmup_is_a_tenth_of_the_epochs_for_initialised_runs_only() -> None:
    assert resolved_warmup_epochs(TrainConfig(epochs=100)) == 0
    assert resolved_warmup_epochs(TrainConfig(epochs=100, init_checkpoint="run")) == 10
    assert resolved_warmup_epochs(TrainConfig(epochs=3, init_checkpoint="run")) == 1
    assert resolved_warmup_epochs(TrainConfig(epochs=100, init_checkpoint="run", warmup_epochs=0)) == 0


def _unlabelled(manifest: Manifest, path: Path) -> Manifest:
    cases = [dataclasses.replace(case, label=None, grade=None) for case in manifest.cases]
    Manifest(channels=manifest.channels, cases=cases).save(path)
    return Manifest.load(path)


@pytest.mark.slow
def test_crmae_pretraining_reports_error_and_baselines_on_masked_voxels(tiny_cohort: Manifest,
                                                                         tmp_path: Path) -> None:
    unlabelled = _unlabelled(tiny_cohort, tmp_path / "unlabelled.csv")
    plan = plan_cohort(unlabelled, tmp_path / "plan.json")
    config = TrainConfig(task="crmae", epochs=2, iterations_per_epoch=3, patch_size=[16, 32, 32], batch_size=2,
                         optimizer="adamw", learning_rate=3e-3, num_workers=0, n_folds=3, network_options=TINY,
                         device="cpu")
    fold = train(unlabelled, plan, tmp_path / "run", config=config).folds[0]
    record = fold.history[-1]
    assert {"val_masked_mse", "val_interpolation_mse", "val_affine_mse", "val_score"} <= set(record)
    assert record["val_score"] == -record["val_masked_mse"] and record["val_affine_mse"] > 0
    assert fold.history[-1]["train_loss"] < fold.history[0]["train_loss"]
    state = json.loads((tmp_path / "run" / "fold_0" / "task_state.json").read_text(encoding="utf-8"))
    assert state["method"] == "crmae" and state["channels"] == ["T1", "T2"]


@pytest.mark.slow
def test_pretrain_then_finetune_from_the_command_line(tiny_cohort: Manifest, tmp_path: Path) -> None:
    runner = CliRunner()
    unlabelled = _unlabelled(tiny_cohort, tmp_path / "unlabelled.csv")
    planned = runner.invoke(app, ["plan", str(unlabelled.source), "--out", str(tmp_path / "plan.json"),
                                  "--patch-size", "16,32,32"])
    assert planned.exit_code == 0, planned.output
    common = ["--plan", str(tmp_path / "plan.json"), "--folds", "3", "--iterations", "3", "--batch-size", "2",
              "--device", "cpu", "--workers", "0", "--optimizer", "adamw", "--lr", "0.003"]
    config = tmp_path / "tiny.json"
    TrainConfig(network_options=TINY, augmentation="light").save(config)
    pretrained = runner.invoke(app, ["pretrain", str(unlabelled.source), "--method", "mae", "--out",
                                     str(tmp_path / "pre"), "--epochs", "2", "--config", str(config), *common])
    assert pretrained.exit_code == 0, pretrained.output
    assert "masked-voxel reconstruction error" in pretrained.output and "interpolation_mse" in pretrained.output
    source = load_checkpoint(tmp_path / "pre" / "fold_0" / "checkpoint_best.pt")
    assert source["task"] == "mae" and source["config"]["network_options"] == TINY

    tuned = runner.invoke(app, ["train", str(tiny_cohort.source), "--out", str(tmp_path / "tuned"), "--epochs", "1",
                                "--config", str(config), "--init", str(tmp_path / "pre"), "--freeze-epochs", "1",
                                "--warmup-epochs", "1", *common])
    assert tuned.exit_code == 0, tuned.output
    report = json.loads((tmp_path / "tuned" / "fold_0" / "init_report.json").read_text(encoding="utf-8"))
    assert report["expected"] == len(report["loaded"]) > 0
    assert f"loaded {report['expected']}/{report['expected']} encoder tensors, 0 skipped" in tuned.output
    weights = load_checkpoint(tmp_path / "tuned" / "fold_0" / "checkpoint_best.pt")["model"]
    encoder = [k for k in weights if network_part("resunet", k) == "encoder"]
    assert sorted(encoder) == report["loaded"]
    for key in encoder:  # frozen for the only epoch: exactly the pretrained tensors
        assert torch.equal(weights[key], source["model"][key]), key
    assert not torch.equal(weights["model.2.0.conv.weight"][:, :2], source["model"]["model.2.0.conv.weight"])

    wrong = runner.invoke(app, ["train", str(tiny_cohort.source), "--out", str(tmp_path / "wrong"), "--epochs", "1",
                                "--init", str(tmp_path / "pre"), *common])
    assert wrong.exit_code == 2 and "does not fit" in wrong.output


def test_pretrain_reads_a_folder_of_images_named_by_channel_index(tiny_cohort: Manifest, tmp_path: Path) -> None:
    runner = CliRunner()
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json")
    folder = tmp_path / "scans"
    folder.mkdir()
    for case in tiny_cohort.cases:  # nnU-Net naming: one file per channel, indexed in the plan's channel order
        for index, channel in enumerate(plan.channels):
            (folder / f"{case.case_id}_{index:04d}.nii.gz").write_bytes(case.images[channel].read_bytes())
    config = tmp_path / "tiny.json"
    TrainConfig(network_options=TINY, augmentation="none").save(config)
    result = runner.invoke(app, ["pretrain", str(folder), "--plan", str(tmp_path / "plan.json"), "--out",
                                 str(tmp_path / "pre"), "--epochs", "1", "--iterations", "2", "--batch-size", "2",
                                 "--folds", "3", "--device", "cpu", "--workers", "0", "--config", str(config)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "pre" / "provenance.json").read_text(encoding="utf-8"))
    assert sorted(record["case_ids"]) == sorted(tiny_cohort.case_ids)
    assert (tmp_path / "pre" / "fold_0" / "checkpoint_best.pt").is_file()
    missing = runner.invoke(app, ["pretrain", str(tmp_path / "nothing-here"), "--plan", str(tmp_path / "plan.json"),
                                  "--out", str(tmp_path / "pre2")])
    assert missing.exit_code == 2 and "input not found" in missing.output
