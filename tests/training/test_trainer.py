"""The training loop: parts in, callbacks around, weights out; resumable and deterministic."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sarcomakit.models import ComposedNetwork
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.tasks.base import LossOutput, Objective
from sarcomakit.training.callbacks import Checkpoint, EarlyStopping, TimeLimit
from sarcomakit.training.trainer import Callback, Trainer

CPU = torch.device("cpu")


class Volumes(torch.utils.data.Dataset):
    """Unlabelled random volumes (as a self-supervised task sees them): deterministic per (epoch, index)."""

    def __init__(self, n: int = 8) -> None:
        self.n = n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 * self.epoch + index)
        return {"image": torch.randn(2, 6, 6, 6, generator=g)}


class Reconstruction(Objective):
    """Learn to reproduce the input (no labels), with one learnt loss scale as an objective parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))

    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        image = batch["image"].to(device)
        error = torch.mean((model(image) - image) ** 2)
        return LossOutput(error * torch.exp(-self.log_scale) + self.log_scale, {"mse": float(error.detach())})


def make_trainer(epochs: int = 3, callbacks: list[Callback] | None = None, seed: int = 0,
                 grad_clip: float | None = 10.0) -> Trainer:
    torch.manual_seed(seed)
    model = ComposedNetwork([nn.Conv3d(2, 2, 1)], nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.LeakyReLU()),
                            heads=None)
    model.backbone.append(nn.Conv3d(4, 2, 1))
    objective = Reconstruction()
    optimizer = torch.optim.Adam([*model.parameters(), *objective.parameters()], lr=1e-2)
    loader = torch.utils.data.DataLoader(Volumes(), batch_size=2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.9**e)
    return Trainer(model, objective, optimizer, loader, device=CPU, epochs=epochs, scheduler=scheduler,
                   callbacks=callbacks or [], grad_clip=grad_clip)


def test_unlabelled_training_lowers_the_loss_and_updates_every_part() -> None:
    trainer = make_trainer(epochs=6)
    before = {k: v.clone() for k, v in trainer.get_weights().items()}
    state = trainer.fit()
    losses = [r["train_loss"] for r in state.history]
    assert state.epoch == 6 and len(losses) == 6 and state.step == 6 * 4
    assert losses[-1] < losses[0]
    after = trainer.get_weights()
    for name in ("input_layers.0.weight", "backbone.0.weight", "backbone.2.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert float(trainer.objective.log_scale.detach()) != 0.0  # the objective's own parameter is optimised too
    assert [r["lr"] for r in state.history][:2] == pytest.approx([1e-2, 0.9e-2])


def test_clipping_covers_the_objective_parameters_too() -> None:
    trainer = make_trainer(epochs=1, grad_clip=1e-3)
    trainer.objective.log_scale.data.fill_(-30.0)  # a huge gradient on the objective's parameter only
    seen = []
    original = trainer.optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        grads = [p.grad for g in trainer.optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads]))))
        return original(*args, **kwargs)

    trainer.optimizer.step = step  # type: ignore[method-assign]
    trainer.run_steps(1)
    assert seen and seen[0] == pytest.approx(1e-3, rel=1e-3)


def test_run_steps_from_given_weights_is_reproducible_and_returns_new_weights() -> None:
    first, second = make_trainer(seed=0), make_trainer(seed=1)
    start = first.get_weights()
    second.set_weights(start)
    assert all(torch.equal(start[k], v) for k, v in second.get_weights().items())
    metrics_a = first.run_steps(5)
    metrics_b = second.run_steps(5)  # same weights, same data order: same result, whatever the model's init seed
    assert metrics_a == pytest.approx(metrics_b) and metrics_a["train_loss"] > 0 and "mse" in metrics_a
    new = first.get_weights()
    assert any(not torch.equal(start[k], new[k]) for k in start)
    assert all(torch.allclose(new[k], v) for k, v in second.get_weights().items())
    assert first.state.step == 5 and first.state.epoch == 1  # 4 batches per epoch: the loader was cycled
    with pytest.raises(RuntimeError):
        second.set_weights({"not": torch.zeros(1)})


def test_resume_from_the_last_checkpoint_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    straight = make_trainer(epochs=4, callbacks=[Checkpoint(tmp_path / "a", "val", "last")])
    (tmp_path / "a").mkdir()
    straight.fit()

    (tmp_path / "b").mkdir()
    interrupted = make_trainer(epochs=2, callbacks=[Checkpoint(tmp_path / "b", "val", "last")])
    interrupted.fit()
    resumed = make_trainer(epochs=4, seed=5, callbacks=[Checkpoint(tmp_path / "b", "val", "last")])
    resumed.load_state_dict(load_checkpoint(tmp_path / "b" / "checkpoint_last.pt"))
    assert resumed.state.epoch == 2
    resumed.fit()
    for key, value in straight.get_weights().items():
        torch.testing.assert_close(resumed.get_weights()[key], value)
    assert [r["epoch"] for r in resumed.state.history] == [0, 1, 2, 3]
    saved = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert saved["epoch"] == 3 and len(saved["history"]) == 4 and saved["best_epoch"] == 3


class FakeScore(Callback):
    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def on_epoch_end(self, trainer: Trainer, record: dict[str, float]) -> None:
        record["val"] = self.scores[int(record["epoch"])]


def test_best_checkpoint_follows_the_validation_score(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path, "val", "validation")
    make_trainer(epochs=4, callbacks=[FakeScore([0.1, 0.5, 0.3, 0.4]), checkpoint]).fit()
    assert checkpoint.best_epoch == 1 and checkpoint.best_score == 0.5
    assert load_checkpoint(tmp_path / "checkpoint_best.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["epoch"] == 3


def test_early_stopping_and_time_limit_stop_the_loop() -> None:
    stopped = make_trainer(epochs=10, callbacks=[FakeScore([0.5, 0.6, 0.6, 0.55, 0.4, 0.9] + [0] * 4),
                                                 EarlyStopping("val", patience=3)]).fit()
    assert stopped.epoch == 5 and "no improvement" in (stopped.stop_reason or "")
    limited = make_trainer(epochs=10, callbacks=[TimeLimit(0.0)]).fit()
    assert limited.epoch == 1 and "time limit" in (limited.stop_reason or "")


def test_threads_are_restored_after_training() -> None:
    before = torch.get_num_threads()
    trainer = make_trainer(epochs=1)
    trainer.threads = 1
    trainer.fit()
    assert torch.get_num_threads() == before


def test_a_privacy_engine_can_wrap_model_optimizer_and_loader() -> None:
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.LeakyReLU(), nn.Conv3d(4, 2, 1))
    objective = Reconstruction()
    objective.log_scale.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = torch.utils.data.DataLoader(Volumes(16), batch_size=4)
    engine = opacus.PrivacyEngine(accountant="prv")
    private_model, private_optimizer, private_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0)
    trainer = Trainer(private_model, objective, private_optimizer, private_loader, device=CPU, epochs=1,
                      grad_clip=None)
    before = trainer.get_weights()
    assert set(before) == set(model.state_dict())  # the wrapper's prefix is not part of the weights
    trainer.run_steps(3)
    after = trainer.get_weights()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    epsilon = engine.get_epsilon(delta=1e-3)
    assert math.isfinite(epsilon) and epsilon > 0
