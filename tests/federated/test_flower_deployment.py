"""A Flower deployment on localhost: a SuperLink, three SuperNodes (one site manifest each) and ``flwr run``.

Everything runs as separate processes from the layered Flower venv (``make .venv-flower/.stamp``; the tests skip
without it, or where TCP to 127.0.0.1 is refused), each in its own process group killed at the end. The SuperLink
runs with runtime dependency installation disabled, so every process uses the sarcomakit this test imports.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

import sarcomakit
from processes import loopback_tcp_works, run_bounded
from sarcomakit.data.manifest import Manifest
from sarcomakit.federated.aggregators import secure_aggregation_error_bound, weighted_mean
from sarcomakit.federated.flower_project import write_flower_project, write_superlink_connection
from sarcomakit.federated.node import load_local_site
from sarcomakit.federated.site import initial_weights, train_site
from sarcomakit.inference.predictor import predict
from sarcomakit.runs.checkpoint import load_checkpoint

from .cohorts import TINY, multi_site_cohort

REPO = Path(__file__).resolve().parents[2]
FLOWER_VENV = Path(os.environ.get("SARCOMAKIT_FLOWER_VENV", REPO / ".venv-flower"))
SITES = ("s1", "s2", "s3")
RUN_TIMEOUT_S = 900

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (FLOWER_VENV / "bin" / "flower-superlink").is_file(),
                       reason=f"no Flower venv at {FLOWER_VENV} (make .venv-flower/.stamp)"),
    pytest.mark.skipif(not loopback_tcp_works(), reason="this machine refuses TCP connections to 127.0.0.1"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Federation:
    root: Path
    manifest: Manifest
    node_configs: dict[str, dict[str, str | float]]
    env: dict[str, str]

    def run(self, name: str, run_config: dict[str, str | int | float | bool]) -> tuple[Path, str]:
        """Submit the app with ``run_config`` and wait for it to finish; the run folder and the run's status."""
        out = self.root / name
        app = write_flower_project(self.root / f"app-{name}", {
            "plan": str(self.root / "plan.json"), "config": str(self.root / "config.json"), "out": str(out),
            "min-nodes": len(SITES), "fraction-evaluate": 0.0, **run_config})
        submitted = run_bounded([str(FLOWER_VENV / "bin" / "flwr"), "run", str(app.parent), "local",
                                 "--format", "json"], self.env, 120)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        run_id = json.loads(submitted.stdout)["run-id"]
        last_round = out / "fold_0" / "rounds" / f"round_{int(run_config['num-server-rounds']):03d}.pt"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        status = ""
        asked = 0.0
        while time.monotonic() < deadline:
            time.sleep(2)
            # the flwr CLI takes seconds to start: ask every 30 s, and at once when the last round is written
            if not last_round.exists() and time.monotonic() - asked < 30:
                continue
            asked = time.monotonic()
            listed = run_bounded([str(FLOWER_VENV / "bin" / "flwr"), "ls", "local", "--run-id", str(run_id),
                                  "--format", "json"], self.env, 60)
            runs = json.loads(listed.stdout).get("runs", []) if listed.returncode == 0 else []
            status = str(runs[0]["status"]) if runs else ""
            if status.startswith("finished"):
                return out, status
        pytest.fail(f"run {run_id} did not finish in {RUN_TIMEOUT_S} s (status {status!r}); "
                    f"logs in {self.root / 'logs'}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A long-running process in its own process group (its children with it), output to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = log.open("w")
    return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """Stop a process group by its leader's id: politely, then by force."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children (SuperExec, app processes) of a group already left


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the SuperLink exited ({process.returncode}):\n{log.read_text(encoding='utf-8')[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    tail = log.read_text(encoding="utf-8")[-3000:]
    pytest.fail(f"the SuperLink did not listen on {port} within {timeout_s:.0f} s:\n{tail}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("flower")
    manifest, _ = multi_site_cohort(root, [s for s in SITES for _ in range(2)])
    TINY.save(root / "config.json")
    src = str(Path(sarcomakit.__file__).resolve().parents[1])
    env = {**os.environ, "PATH": f"{FLOWER_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p),
           "FLWR_HOME": str(root / "flwr-home"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    port = free_port()
    write_superlink_connection(root / "flwr-home", f"127.0.0.1:{port}")
    processes = []
    try:
        superlink = start([str(FLOWER_VENV / "bin" / "flower-superlink"), "--insecure",
                           "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port)],
                          env, root / "logs" / "superlink.log")
        processes.append(superlink)
        wait_for_port(port, superlink, root / "logs" / "superlink.log")
        node_configs = {}
        for site in SITES:
            site_manifest = root / "cohort" / f"site_{site}.csv"
            Manifest(channels=manifest.channels, cases=[c for c in manifest.cases if c.site == site]).save(
                site_manifest)
            node_configs[site] = {"manifest": str(site_manifest), "plan": str(root / "plan.json"),
                                  "config": str(root / "config.json"), "cache": str(root / f"cache-{site}"),
                                  "site-name": site, "val-fraction": 0.0}
            node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in node_configs[site].items())
            processes.append(start([str(FLOWER_VENV / "bin" / "flower-supernode"), "--insecure",
                                    "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                                    "--node-config", node_config], env, root / "logs" / f"supernode-{site}.log"))
        yield Federation(root, manifest, node_configs, env)
    finally:
        for process in reversed(processes):
            stop(process)


def test_two_rounds_on_three_supernodes_write_a_run_folder_that_predict_takes(federation: Federation,
                                                                               tmp_path: Path) -> None:
    out, status = federation.run("fedavg", {"num-server-rounds": 2, "local-steps": 2})
    assert status == "finished:completed", (federation.root / "logs").as_posix()
    rounds = sorted(p.name for p in (out / "fold_0" / "rounds").iterdir())
    assert rounds == ["round_000.pt", "round_001.pt", "round_002.pt"]  # the initial weights, then each round
    history = pd.read_csv(out / "fold_0" / "history.csv")
    assert sorted(zip(history["round"], history["site"], strict=True)) == [(r, s) for r in (1, 2) for s in SITES]
    assert (history["status"] == "ok").all() and (history["n_train"] == 2).all()
    assert history["node_id"].nunique() == len(SITES) and (history["train_loss"] > 0).all()
    first, second = (load_checkpoint(out / "fold_0" / "rounds" / f"round_00{r}.pt")["model"] for r in (1, 2))
    assert any(not torch.equal(first[k], second[k]) for k in first)
    outcome = predict(out, federation.manifest.source, tmp_path / "pred")
    assert not outcome.failures and len(outcome.results) == len(federation.manifest)


def test_secure_aggregation_equals_fedavg_within_quantisation_and_hides_each_update(
        federation: Federation) -> None:
    settings = {"max-weight": 10.0, "clipping-range": 8.0, "quantization-range": 4194304}
    out, status = federation.run("secagg", {"secure-aggregation": True, "num-server-rounds": 1, "local-steps": 2,
                                            "num-shares": 3, "reconstruction-threshold": 2, **settings})
    assert status == "finished:completed", (federation.root / "logs").as_posix()
    history = pd.read_csv(out / "fold_0" / "history.csv")
    assert sorted(history["site"]) == list(SITES) and (history["status"] == "ok").all()
    # the server's strategy received three results that all carry one (the unmasked sum's) set of weights
    assert json.loads((out / "fold_0" / "secure_aggregation.json").read_text(encoding="utf-8")) == [
        {"round": 1, "results": 3, "distinct_parameter_sets": 1}]
    # each site's update, recomputed here exactly as its SuperNode trained it, and their plain FedAvg
    start, updates = _site_updates(federation, steps=2)
    plain = weighted_mean(updates, start)
    secure = load_checkpoint(out / "fold_0" / "rounds" / "round_001.pt")["model"]
    bound = secure_aggregation_error_bound([n for _, n in updates], max_weight=settings["max-weight"],
                                           clipping_range=settings["clipping-range"],
                                           quantization_range=settings["quantization-range"]) + 1e-6
    error = max(float((secure[k] - plain[k]).abs().max()) for k in plain)
    assert error <= bound
    # the aggregate is not any one site's update: that would differ from FedAvg by far more than the bound
    assert all(max(float((w[k] - plain[k]).abs().max()) for k in plain) > 10 * bound for w, _ in updates)


def _site_updates(federation: Federation, steps: int) -> tuple[dict[str, torch.Tensor], list[tuple[dict, int]]]:
    """Each SuperNode's first-round update, recomputed here exactly as it trained it, and the initial weights."""
    updates, start = [], {}
    for node_config in federation.node_configs.values():
        task, plan, config, site = load_local_site(node_config)
        start = initial_weights(task, plan, config)
        update = train_site(task, plan, config, site, start, steps=steps, round_index=0)
        updates.append((update.weights, update.n_cases))
    return start, updates


def test_central_dp_clips_each_sites_update_adds_calibrated_noise_and_reports_epsilon(
        federation: Federation) -> None:
    from sarcomakit.federated.privacy import central_dp_epsilon

    noise, clip = 1.0, 0.05
    out, status = federation.run("central-dp", {"num-server-rounds": 1, "local-steps": 2, "central-dp-noise": noise,
                                                "central-dp-clip": clip, "central-dp-delta": 1e-3})
    assert status == "finished:completed", (federation.root / "logs").as_posix()
    start, updates = _site_updates(federation, steps=2)
    clipped = []
    for weights, _ in updates:
        delta = {k: weights[k].double() - start[k].double() for k in start}
        norm = float(torch.sqrt(sum(d.square().sum() for d in delta.values())))
        assert norm > clip  # every update is clipped: the check below sees the clipping
        clipped.append({k: d * min(1.0, clip / norm) for k, d in delta.items()})
    released = load_checkpoint(out / "fold_0" / "rounds" / "round_001.pt")["model"]
    # the released weights are the uniform mean of the clipped updates plus Gaussian noise of std noise*clip/3
    residual = torch.cat([(released[k].double() - start[k].double()
                           - sum(c[k] for c in clipped) / len(clipped)).flatten() for k in start])
    expected = noise * clip / len(SITES)
    assert abs(float(residual.std()) - expected) < 0.05 * expected and abs(float(residual.mean())) < 0.1 * expected
    privacy = json.loads((out / "privacy.json").read_text(encoding="utf-8"))
    assert privacy["unit"] == "site" and privacy["clipping_norm"] == clip
    assert privacy["epsilon_by_round"]["1"] == pytest.approx(central_dp_epsilon(noise, 1, 1e-3))


def test_client_app_handlers_pass_in_the_flower_venv() -> None:
    """test_flower_app.py needs flwr, which only the Flower venv has: run it there (it skips in the main venv)."""
    result = run_bounded([str(FLOWER_VENV / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=", str(Path(__file__).with_name("test_flower_app.py"))],
                         dict(os.environ), 600)
    assert result.returncode == 0 and " passed" in result.stdout and "skipped" not in result.stdout, result.stdout
