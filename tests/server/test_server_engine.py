"""The server's engine: stateless answers, expiring sessions, a worker pool that runs requests side by side; the CLI."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi")
pytest.importorskip("requests")

import requests  # noqa: E402
from server_helpers import running_server, scribble_points, study, write_study  # noqa: E402

from sarcomakit.cli.main import app as cli  # noqa: E402
from sarcomakit.core.errors import UserInputError  # noqa: E402
from sarcomakit.interactive.classical import RandomWalkerModel  # noqa: E402
from sarcomakit.interactive.session import InteractiveSession  # noqa: E402
from sarcomakit.server import create_app  # noqa: E402
from sarcomakit.server.engine import InferenceEngine, points_to_prompts  # noqa: E402


class SlowModel:
    """Answers an empty mask after a fixed delay (a slow network; empty, so the ROI never grows)."""

    name = "slow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def predict(self, image, prompts, previous_mask, roi, *, spacing=None):  # noqa: ANN001, ANN201
        time.sleep(self.delay_s)
        return np.zeros(roi.shape, bool)


def test_replace_sets_prompts_and_mask_at_once() -> None:
    image, reference = study()
    session = InteractiveSession(RandomWalkerModel(), image)
    foreground, background = scribble_points(reference)
    prompts = points_to_prompts(foreground, True, session.shape) + points_to_prompts(background, False, session.shape)
    session.replace(prompts)
    first = session.predict()
    session.replace(prompts[:1], mask=np.zeros(session.shape, bool))
    session.predict()
    session.replace(prompts)
    assert np.array_equal(session.predict(), first)
    assert session.undo() and len(session.prompts) == 1
    with pytest.raises(UserInputError, match="shape"):
        session.replace(prompts, mask=np.zeros((2, 2, 2), bool))


def test_points_are_itk_indices_grouped_per_axial_slice() -> None:
    prompts = points_to_prompts([[1, 2, 3], [4, 2, 3], [0, 0, 5]], True, (8, 8, 8))
    assert [p.slice_index for p in prompts] == [3, 5]
    assert prompts[0].voxels.tolist() == [[3, 2, 1], [3, 2, 4]]  # (z, y, x)
    with pytest.raises(UserInputError, match="outside"):
        points_to_prompts([[8, 0, 0]], True, (9, 8, 8))  # x (i) has 8 voxels
    with pytest.raises(UserInputError, match="integers"):
        points_to_prompts([[1.5, 0, 0]], True, (8, 8, 8))


def test_sessions_expire() -> None:
    engine = InferenceEngine(RandomWalkerModel(), session_ttl_s=0.2)
    image, _ = study()
    entry = engine.create_session(image, "x")
    assert engine.get_session(entry.session_id) is not None
    time.sleep(0.4)
    assert engine.get_session(entry.session_id) is None and engine.session_count() == 0
    engine.close()


def test_slow_requests_run_side_by_side(tmp_path: Path) -> None:
    delay = 1.0
    app = create_app(tmp_path / "studies", SlowModel(delay), workers=4)
    for i in range(3):
        path, _ = write_study(tmp_path, f"case{i}", seed=i)
        app.state.datastore.add_image(path, path.name, f"case{i}")
    answers: dict[int, int] = {}

    def infer(url: str, i: int) -> None:
        response = requests.post(f"{url}/infer/sarcomakit?image=case{i}&output=json",
                                 data={"params": json.dumps({"foreground": [[20, 20, 10]]})}, timeout=30)
        answers[i] = response.status_code

    with running_server(app) as url:
        started = time.perf_counter()
        threads = [threading.Thread(target=infer, args=(url, i)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        elapsed = time.perf_counter() - started
        assert requests.get(f"{url}/info/", timeout=5).status_code == 200
    assert answers == {0: 200, 1: 200, 2: 200}
    assert elapsed < 2.5 * delay  # three one-second predictions, not run one after another


def test_serve_cli_reports_a_bad_token_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("short admin\n")
    result = CliRunner().invoke(cli, ["serve", "--studies", str(tmp_path / "s"), "--model", "random_walker",
                                      "--token-file", str(tokens)])
    assert result.exit_code == 2 and "shorter than 16" in result.output


def test_serve_cli_starts_uvicorn_on_localhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.update(kwargs, app=app))
    result = CliRunner().invoke(cli, ["serve", "--studies", str(tmp_path / "s"), "--model", "random_walker"])
    assert result.exit_code == 0, result.output
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8000
    assert calls["app"].state.engine.spec == "random_walker"
