"""The Flower app project that ``flwr run`` submits: written by the CLI, valid TOML, every run config key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.federated.flower_project import (
    RUN_CONFIG_DEFAULTS,
    write_flower_project,
    write_superlink_connection,
)


def test_the_cli_writes_the_apps_pyproject_with_the_run_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["federated", "flower-project", str(tmp_path / "app"), "--plan", "plan.json",
                                      "--strategy", "fedprox", "--mu", "0.01", "--rounds", "4",
                                      "--secure-aggregation"])
    assert result.exit_code == 0, result.output
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text(encoding="utf-8"))
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"] == {"serverapp": "sarcomakit.federated.flower_app:server_app",
                                  "clientapp": "sarcomakit.federated.flower_app:client_app"}
    assert set(flwr["config"]) == set(RUN_CONFIG_DEFAULTS)  # flwr run --run-config may override any of them
    assert flwr["config"]["strategy"] == "fedprox" and flwr["config"]["proximal-mu"] == 0.01
    assert flwr["config"]["num-server-rounds"] == 4 and flwr["config"]["secure-aggregation"] is True
    assert Path(flwr["config"]["plan"]).is_absolute()  # the server resolves paths from wherever it runs
    assert project["project"]["dependencies"] == []  # nothing to install at run time


def test_unknown_run_config_keys_are_refused_and_the_connection_file_names_the_superlink(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="rounds"):
        write_flower_project(tmp_path, {"rounds": 3})
    path = write_superlink_connection(tmp_path / "home", "127.0.0.1:9090")
    connection = tomllib.loads(path.read_text(encoding="utf-8"))
    assert connection["superlink"]["default"] == "local"
    assert connection["superlink"]["local"] == {"address": "127.0.0.1:9090", "insecure": True}
    secure = tomllib.loads(write_superlink_connection(tmp_path / "tls", "h:9090", root_certificates="ca.crt")
                           .read_text(encoding="utf-8"))
    assert secure["superlink"]["local"] == {"address": "h:9090", "root-certificates": "ca.crt"}
