"""The task contract: abstract methods, declared requirements, options by name, prediction schema."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.cli.training import parse_task_options
from sarcomakit.core.errors import UserInputError
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import Task, build_task, task_options
from sarcomakit.tasks.multitask import CLINICAL_COLUMNS, MultiTaskTask
from sarcomakit.tasks.segmentation import SegmentationTask


def test_a_task_must_implement_the_whole_contract() -> None:
    class Incomplete(Task):
        name = "incomplete"

        def build_model(self, plan, config):  # noqa: ANN001, ANN201
            raise NotImplementedError

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_tasks_declare_what_they_need_and_write() -> None:
    seg, multi = SegmentationTask.requirements, MultiTaskTask.requirements
    assert seg.needs_labels and not seg.allow_missing_channels and not seg.stratify_clinical
    assert multi.needs_labels and multi.allow_missing_channels and multi.stratify_clinical
    assert SegmentationTask.case_columns == () and MultiTaskTask.case_table == "clinical_predictions.csv"
    assert MultiTaskTask.case_columns == CLINICAL_COLUMNS and CLINICAL_COLUMNS[0] == "case_id"


def test_options_are_the_constructor_arguments_with_their_documentation() -> None:
    options = task_options("multitask")
    assert {"tasks", "weighting", "ordinal", "modality_dropout", "cox_memory"} <= set(options)
    assert options["weighting"][0] == "fixed" and "uncertainty" in options["weighting"][1]
    assert task_options("segmentation") == {}


def test_build_task_validates_options_by_name_and_type() -> None:
    task = build_task(TrainConfig(task="multitask", task_options={"tasks": ["grade", "segmentation"],
                                                                  "ordinal": "true", "cox_memory": "16"}))
    assert isinstance(task, MultiTaskTask)
    assert task.tasks == ("segmentation", "grade") and task.ordinal is True and task.cox_memory == 16
    with pytest.raises(UserInputError, match="has no option colour"):
        build_task(TrainConfig(task="multitask", task_options={"colour": "red"}))
    with pytest.raises(UserInputError, match="cox_memory"):
        build_task(TrainConfig(task="multitask", task_options={"cox_memory": "many"}))
    with pytest.raises(UserInputError, match="unknown task 'stage'"):
        build_task(TrainConfig(task="stage"))


def test_cli_task_options_parse_json_lists_and_strings() -> None:
    assert parse_task_options(["tasks=segmentation,grade", "ordinal=true", "cox_memory=32", "weighting=fixed",
                               "weights={\"grade\": 2}"]) == {
        "tasks": ["segmentation", "grade"], "ordinal": True, "cox_memory": 32, "weighting": "fixed",
        "weights": {"grade": 2}}


def test_tasks_command_lists_tasks_requirements_and_options() -> None:
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    assert "multitask" in result.output and "segmentation" in result.output
    assert "--task-option weighting=" in result.output and "zero-filled" in result.output


def test_train_refuses_a_malformed_task_option(tmp_path) -> None:  # noqa: ANN001
    result = CliRunner().invoke(app, ["train", str(tmp_path / "m.csv"), "--plan", str(tmp_path / "p.json"),
                                      "--task-option", "ordinal"])
    assert result.exit_code == 2 and "key=value" in result.output
