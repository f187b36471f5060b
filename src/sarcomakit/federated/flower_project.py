"""The Flower app project folder that ``flwr run`` submits, and the SuperLink connection file it reads.

``flwr run APP_DIR SUPERLINK`` (a connection named in ``$FLWR_HOME/config.toml``) packs ``APP_DIR`` (a
``pyproject.toml`` naming the ``ServerApp`` and ``ClientApp`` and holding the run config's defaults) into a
Flower App Bundle and sends it to the SuperLink.
Here the apps live in the installed package (:mod:`sarcomakit.federated.flower_app`), so the folder holds only
that ``pyproject.toml``: nothing is installed at run time (the SuperLink runs with
``--disable-runtime-dependency-installation``, SuperNodes never install by default), and every site runs the
sarcomakit it has.

Written by code rather than shipped as a data file, so an installed sarcomakit can produce it
(``sarcomakit federated flower-project``) and tests write the same file users get. This module does not need
``flwr``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text

ConfigValue = str | int | float | bool

# Every key a run may override (``flwr run --run-config``) must exist here: Flower refuses unknown keys.
RUN_CONFIG_DEFAULTS: dict[str, ConfigValue] = {
    "strategy": "fedavg",           # fedavg, fedprox, fedadam, fedyogi, fedmedian
    "num-server-rounds": 3,
    "local-steps": 10,              # optimisation steps per site and round
    "min-nodes": 2,                 # a round waits for this many SuperNodes and goes on without the rest
    "fraction-evaluate": 1.0,       # share of SuperNodes that validate the global weights each round (0: none)
    "proximal-mu": 0.0,             # FedProx
    "server-lr": 0.01,              # FedAdam / FedYogi
    "plan": "",                     # the shared plan JSON, on the server
    "config": "",                   # the shared TrainConfig JSON, on the server ("": defaults)
    "out": "runs/flower",           # the global run folder, on the server
    "secure-aggregation": False,    # SecAgg+ (Flower's legacy workflow; FedAvg only)
    "central-dp-noise": 0.0,        # client-level DP: noise multiplier (0: off); FedAvg/FedProx, not with SecAgg+
    "central-dp-clip": 1.0,         # client-level DP: L2 clipping norm of each site's update
    "central-dp-delta": 0.001,      # client-level DP: delta epsilon is reported at (below 1 / sites)
    "num-shares": 3,                # SecAgg+: shares of each node's secret (an int, or a fraction of the nodes)
    "reconstruction-threshold": 2,  # SecAgg+: shares needed to reconstruct a dropped node's mask
    "max-weight": 1000.0,           # SecAgg+: the largest number of training cases of one site
    "clipping-range": 8.0,          # SecAgg+: weights are clipped to [-r, r] before quantisation
    "quantization-range": 4194304,  # SecAgg+: integer levels of that range (2^22)
}

SERVER_APP = "sarcomakit.federated.flower_app:server_app"
CLIENT_APP = "sarcomakit.federated.flower_app:client_app"


def toml_value(value: ConfigValue) -> str:
    """One TOML value (JSON's string escapes are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def flower_project_toml(run_config: Mapping[str, ConfigValue] | None = None) -> str:
    """The app's ``pyproject.toml``: the run config defaults updated with ``run_config``."""
    values = dict(RUN_CONFIG_DEFAULTS)
    unknown = sorted(set(run_config or {}) - set(values))
    if unknown:
        raise UserInputError(f"unknown Flower run config key(s): {', '.join(unknown)}.",
                             fix=f"use keys among {', '.join(RUN_CONFIG_DEFAULTS)}.")
    values.update(run_config or {})
    lines = [
        "# The sarcomakit Flower app: `flwr run . SUPERLINK` submits it to a SuperLink (see",
        "# docs/federated-learning.md). The apps come from the installed sarcomakit; nothing is installed at run time.",
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "sarcomakit-federated"',
        'version = "1.0.0"',
        'description = "Federated training of sarcomakit tasks across hospitals"',
        'license = "Apache-2.0"',
        "dependencies = []  # sarcomakit and flwr are preinstalled at every site",
        "",
        "[tool.flwr.app]",
        'publisher = "sarcomakit"',
        "",
        "[tool.flwr.app.components]",
        f"serverapp = {toml_value(SERVER_APP)}",
        f"clientapp = {toml_value(CLIENT_APP)}",
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {toml_value(value)}" for key, value in values.items()),
        "",
    ]
    return "\n".join(lines)


def write_flower_project(app_dir: str | Path, run_config: Mapping[str, ConfigValue] | None = None) -> Path:
    """Write ``app_dir/pyproject.toml`` (the folder ``flwr run`` takes) and return its path."""
    path = Path(app_dir) / "pyproject.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, flower_project_toml(run_config))
    return path


def write_superlink_connection(flwr_home: str | Path, address: str, *, name: str = "local",
                               root_certificates: str | Path | None = None) -> Path:
    """Write ``FLWR_HOME/config.toml`` naming the SuperLink that ``flwr run APP_DIR NAME`` talks to.

    Flower 1.42 reads the connection from ``$FLWR_HOME/config.toml``, not from the app's ``pyproject.toml``.
    Without ``root_certificates`` the connection is insecure (plain HTTP; localhost tests only).
    """
    security = (f"root-certificates = {toml_value(str(root_certificates))}" if root_certificates is not None
                else "insecure = true")
    path = Path(flwr_home) / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "\n".join(["[superlink]", f"default = {toml_value(name)}", "", f"[superlink.{name}]",
                                f"address = {toml_value(address)}", security, ""]))
    return path
