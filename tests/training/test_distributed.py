"""DistributedDataParallel on CPU (gloo): gradients are averaged across processes, as one step on the whole batch."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from processes import COLLECTIVE_TIMEOUT_S, needs_loopback_tcp
from sarcomakit.core import distributed
from sarcomakit.core.errors import UserInputError
from sarcomakit.tasks.base import LossOutput, Objective
from sarcomakit.training.trainer import Trainer


class VoxelLoss(Objective):
    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        return LossOutput(torch.mean((model(batch["image"]) - batch["target"]) ** 2))


def network() -> nn.Module:
    torch.manual_seed(0)
    # instance norm: per-sample statistics, so a split batch gives the same gradient as the whole one
    return nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.LeakyReLU(),
                         nn.Conv3d(4, 1, 1))


def batch(rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    return {"image": torch.randn(2, 2, 6, 6, 6, generator=g), "target": torch.randn(2, 1, 6, 6, 6, generator=g)}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "SARCOMAKIT_DIST_TIMEOUT_S": COLLECTIVE_TIMEOUT_S})
    torch.set_num_threads(1)
    device = distributed.init_from_environment("cpu")
    assert device is not None and distributed.world_size() == world and distributed.rank() == rank
    model = nn.parallel.DistributedDataParallel(network())
    trainer = Trainer(model, VoxelLoss(), torch.optim.SGD(model.parameters(), lr=0.1), [batch(rank)],
                      device=device, epochs=1)
    trainer.run_steps(1)
    shard = distributed.shard(list(range(5)))
    metrics = distributed.mean_metrics({"dice": float(rank + 1), "only_rank0": 1.0} if rank == 0 else
                                       {"dice": float(rank + 1)}, weight=len(shard))
    torch.save({"weights": trainer.get_weights(), "shard": shard, "metrics": metrics}, Path(out) / f"{rank}.pt")
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_workers(world: int, out: Path, timeout_s: float = 300) -> None:
    """Start the ranks (spawned: forking a process that already runs threads can deadlock the child) and wait for
    them, killing them and failing after ``timeout_s``."""
    context = mp.start_processes(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {world} processes did not finish in {timeout_s:.0f} s")


@pytest.mark.slow
@needs_loopback_tcp
def test_two_processes_average_gradients_like_one_step_on_the_concatenated_batch(tmp_path: Path) -> None:
    _run_workers(2, tmp_path)
    results = [torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in range(2)]

    single = network()
    whole = {k: torch.cat([batch(0)[k], batch(1)[k]]) for k in ("image", "target")}
    Trainer(single, VoxelLoss(), torch.optim.SGD(single.parameters(), lr=0.1), [whole], device=torch.device("cpu"),
            epochs=1).run_steps(1)
    start = network().state_dict()
    for key, value in single.state_dict().items():
        torch.testing.assert_close(results[0]["weights"][key], results[1]["weights"][key], rtol=0, atol=0)
        torch.testing.assert_close(results[0]["weights"][key], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(start[k], single.state_dict()[k]) for k in start)

    assert results[0]["shard"] == [0, 2, 4] and results[1]["shard"] == [1, 3]
    # weighted by the number of items each rank saw: (1*3 + 2*2) / 5; a metric only one rank has keeps its value
    assert results[0]["metrics"]["dice"] == pytest.approx(7 / 5) == results[1]["metrics"]["dice"]
    assert results[1]["metrics"]["only_rank0"] == 1.0


def test_processes_on_one_machine_use_loopback_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert not distributed.single_machine()  # two machines: gloo keeps its own choice
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.single_machine()
    distributed.use_loopback_for_gloo()
    assert os.environ["GLOO_SOCKET_IFNAME"] == distributed.loopback_interface() == "lo"
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth1")
    distributed.use_loopback_for_gloo()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "eth1"


def test_collective_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SARCOMAKIT_DIST_TIMEOUT_S", raising=False)
    assert distributed.timeout().total_seconds() == 1800
    monkeypatch.setenv("SARCOMAKIT_DIST_TIMEOUT_S", "90")
    assert distributed.timeout().total_seconds() == 90
    monkeypatch.setenv("SARCOMAKIT_DIST_TIMEOUT_S", "soon")
    with pytest.raises(UserInputError, match="SARCOMAKIT_DIST_TIMEOUT_S"):
        distributed.timeout()


def test_single_process_helpers_are_the_identity() -> None:
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.mean_metrics({"a": 1.0}) == {"a": 1.0}
    assert distributed.broadcast_object({"x": 1}) == {"x": 1}
