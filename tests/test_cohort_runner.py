"""run_per_case: one failing item never stops the others; skips, failure messages and the exit policy."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.errors import UserInputError


def quiet_run(items, fn, **options):  # noqa: ANN001, ANN201 (generic pass-through)
    return run_per_case(items, fn, show_progress=False, console=Console(file=io.StringIO()), **options)


def test_failures_are_recorded_and_every_other_item_still_runs() -> None:
    calls: list[str] = []

    def work(item: str) -> str:
        calls.append(item)
        if item == "b":
            raise UserInputError("image is truncated", path="b.nii.gz", fix="export it again.")
        if item == "c":
            raise RuntimeError("out of memory")
        return item.upper()

    outcome = quiet_run(["a", "b", "c", "d"], work)
    assert calls == ["a", "b", "c", "d"]
    assert outcome.results == {"a": "A", "d": "D"}
    assert outcome.failures == {"b": "b.nii.gz: image is truncated Fix: export it again.",
                                "c": "RuntimeError: out of memory"}  # our errors as written, others with their type
    assert outcome.skipped == []
    assert outcome.exit_code == 1 and not outcome.all_failed


def test_items_already_done_are_skipped_without_running() -> None:
    calls: list[int] = []
    outcome = quiet_run(range(5), lambda i: calls.append(i) or i * i, name=lambda i: f"case{i}",
                        is_done=lambda i: i % 2 == 0)
    assert calls == [1, 3]
    assert outcome.skipped == ["case0", "case2", "case4"]
    assert outcome.results == {"case1": 1, "case3": 9}
    assert outcome.exit_code == 0 and not outcome.all_failed


def test_items_may_come_from_a_generator() -> None:
    outcome = quiet_run((n for n in ("x", "y")), len)
    assert outcome.results == {"x": 1, "y": 1}


def test_an_interrupt_stops_the_run_instead_of_being_recorded() -> None:
    calls: list[str] = []

    def work(item: str) -> None:
        calls.append(item)
        if item == "b":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        quiet_run(["a", "b", "c"], work)
    assert calls == ["a", "b"]


@pytest.mark.parametrize(("results", "failures", "skipped", "exit_code", "all_failed"), [
    ({}, {}, [], 0, False),  # nothing to do
    ({"a": 1}, {}, ["b"], 0, False),
    ({}, {}, ["a", "b"], 0, False),  # everything already done
    ({"a": 1}, {"b": "bad"}, [], 1, False),  # any failure exits 1, after the others finished
    ({}, {"b": "bad"}, ["a"], 1, False),
    ({}, {"a": "bad", "b": "bad"}, [], 1, True),
])
def test_exit_code_and_all_failed(results: dict, failures: dict, skipped: list, exit_code: int,
                                  all_failed: bool) -> None:
    outcome: CohortResult[int] = CohortResult(results=results, failures=failures, skipped=skipped)
    assert outcome.exit_code == exit_code
    assert outcome.all_failed is all_failed


def test_summary_counts_and_lists_the_failures() -> None:
    outcome = quiet_run(["ok", "bad"], lambda item: 1 / (item == "ok"), is_done=lambda item: False)
    buffer = io.StringIO()
    outcome.print_summary(Console(file=buffer, width=200), what="slide")
    text = buffer.getvalue()
    assert "1 slide(s) done, 0 skipped (already done), 1 failed." in text
    assert "failed bad: ZeroDivisionError: division by zero" in text
