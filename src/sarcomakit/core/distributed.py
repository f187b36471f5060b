"""Several processes, one model: PyTorch's DistributedDataParallel for training, sharding for prediction.

Launched by ``torchrun`` (or ``sarcomakit train --nproc N``, which calls it), each process reads its
rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). The process group uses NCCL on GPUs
and gloo on CPUs. Without those variables everything here is the single-process identity, so the same
code runs alone or distributed:

- :func:`shard` gives each rank every ``world``-th item (cases to predict, validation cases);
- :func:`mean_metrics` averages a rank's metrics over ranks, weighted by how many items each rank saw;
- :func:`is_main` is true on rank 0 only, which alone writes files and prints.

When every process runs on one machine (``LOCAL_WORLD_SIZE == WORLD_SIZE``, as with ``--standalone`` or
``--nproc``), gloo is told to use the loopback interface unless ``GLOO_SOCKET_IFNAME`` is set: by default gloo
binds to the address the host name resolves to, which on many hospital and cloud machines is an interface
whose local connections a firewall drops, and then the processes wait for each other until the timeout.
``SARCOMAKIT_DIST_TIMEOUT_S`` sets that timeout (default 1800 s: the longest a rank may wait for the others,
e.g. while rank 0 preprocesses the cohort).
"""

from __future__ import annotations

import datetime
import math
import os
import socket
from collections.abc import Mapping, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from sarcomakit.core.errors import UserInputError

T = TypeVar("T")


def launched() -> bool:
    """True in a process started by torchrun (the environment names a world of processes)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment(device_name: str = "auto") -> torch.device | None:
    """Join the process group described by torchrun's variables; returns this rank's device (None when not
    launched by torchrun). GPUs are assigned by ``LOCAL_RANK``."""
    if not launched():
        return None
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if not active():
        if single_machine():
            use_loopback_for_gloo()
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout())
    return torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")


def single_machine() -> bool:
    """True when torchrun's variables say that all the processes run on this machine."""
    return os.environ.get("LOCAL_WORLD_SIZE", "") == os.environ.get("WORLD_SIZE", "-")


def loopback_interface() -> str | None:
    """The name of this machine's loopback network interface (``lo`` on Linux, ``lo0`` on macOS), if any."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


def use_loopback_for_gloo() -> None:
    """Point gloo at the loopback interface (processes on one machine), unless the user chose one."""
    name = loopback_interface()
    if name and not os.environ.get("GLOO_SOCKET_IFNAME"):
        os.environ["GLOO_SOCKET_IFNAME"] = name


def timeout() -> datetime.timedelta:
    """How long a collective waits for the other processes: ``SARCOMAKIT_DIST_TIMEOUT_S`` seconds, or 30 minutes."""
    value = os.environ.get("SARCOMAKIT_DIST_TIMEOUT_S", "").strip()
    try:
        seconds = float(value) if value else 1800.0
    except ValueError:
        seconds = math.nan
    if not seconds > 0:
        raise UserInputError(f"SARCOMAKIT_DIST_TIMEOUT_S is '{value}', not a number of seconds.",
                             fix="set it to a positive number (e.g. 600) or unset it.")
    return datetime.timedelta(seconds=seconds)


def shutdown() -> None:
    """Leave the process group (a no-op when none is initialised)."""
    if active():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th, starting at its rank."""
    return list(items[rank()::world_size()])


def mean_metrics(metrics: Mapping[str, float], weight: float = 1.0) -> dict[str, float]:
    """The weighted mean over ranks of each metric (NaN values and ranks without the metric do not count).

    Every rank must call this with the same keys in any order; a rank without items passes ``{}``.
    """
    if not active():
        return dict(metrics)
    keys: list[list[str]] = [[] for _ in range(world_size())]
    dist.all_gather_object(keys, sorted(metrics))
    names = sorted({k for part in keys for k in part})
    values = torch.zeros(len(names), 2, dtype=torch.float64)
    for i, name in enumerate(names):
        value = metrics.get(name, math.nan)
        if not math.isnan(value):
            values[i] = torch.tensor([value * weight, weight], dtype=torch.float64)
    backend_device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    values = values.to(backend_device)
    dist.all_reduce(values)
    values = values.cpu()
    return {name: float(values[i, 0] / values[i, 1]) if values[i, 1] > 0 else math.nan
            for i, name in enumerate(names)}


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
