"""Long work shows progress when the output is not a terminal: plain lines at a bounded rate, never silence."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from sarcomakit.core import cohort_runner
from sarcomakit.core.cohort_runner import PlainProgress, run_per_case


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _log_console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=30), buffer  # a file: not a terminal, like CI logs or nohup


def test_plain_lines_are_rate_limited_and_estimate_the_time_left() -> None:
    console, buffer = _log_console()
    clock = FakeClock()
    progress = PlainProgress(console, "predicting", 40, every_s=30, clock=clock)
    for _ in range(11):  # 11 cases in 55 s: one line at 30 s, none before
        clock.now += 5
        progress.advance()
    clock.now += 25  # 12th case at 80 s
    progress.advance()
    lines = buffer.getvalue().splitlines()
    assert lines == ["predicting: 6/40, 30s elapsed, ~2m left", "predicting: 12/40, 1m20s elapsed, ~3m left"]
    for _ in range(28):
        progress.advance(skipped=True)  # already done: no time, no line until the end
    assert buffer.getvalue().splitlines()[-1] == "predicting: 40/40, done in 1m20s"
    assert all(len(line) > 30 for line in lines)  # long lines were not wrapped at the console width


def test_skipped_items_do_not_shorten_the_estimate() -> None:
    console, buffer = _log_console()
    clock = FakeClock()
    progress = PlainProgress(console, "preprocess", 10, every_s=0, clock=clock)
    for _ in range(5):
        progress.advance(skipped=True)
    clock.now += 60
    progress.advance()  # one real case took a minute; four remain
    assert buffer.getvalue().splitlines()[-1] == "preprocess: 6/10, 1m00s elapsed, ~4m left"


def test_cohort_loop_prints_plain_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cohort_runner, "PLAIN_PROGRESS_SECONDS", 0.0)
    console, buffer = _log_console()
    result = run_per_case(range(3), lambda i: i * 2, description="cases", console=console)
    assert result.results == {"0": 0, "1": 2, "2": 4}
    text = buffer.getvalue()
    assert "cases: 1/3" in text and "cases: 2/3" in text and "cases: 3/3, done in" in text
    assert "━" not in text  # no bar drawn into the log


def test_terminal_keeps_the_live_bar_and_no_progress_means_silence() -> None:
    buffer = io.StringIO()
    terminal = Console(file=buffer, force_terminal=True, width=100)
    run_per_case(range(3), lambda i: i, description="cases", console=terminal)
    assert "cases: 3/3, done in" not in buffer.getvalue() and "3/3" in buffer.getvalue()
    console, quiet = _log_console()
    run_per_case(range(3), lambda i: i, description="cases", console=console, show_progress=False)
    assert quiet.getvalue() == ""
