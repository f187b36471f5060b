"""Tasks: what a model is trained for and how its predictions are made (see :mod:`sarcomakit.tasks.base`).

Importing this package registers the built-in tasks; :func:`build_task` builds the one a config names.
"""

from __future__ import annotations

import inspect
import re
import sys
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from sarcomakit.core.errors import UserInputError
from sarcomakit.tasks.base import TASKS, CaseOutput, LossOutput, Objective, Task, TaskRequirements
from sarcomakit.tasks.interactive import InteractiveTask
from sarcomakit.tasks.multitask import MultiTaskTask
from sarcomakit.tasks.pretraining import (
    CrossModalMaskedAutoencoderTask,
    MaskedAutoencoderTask,
    SimMIMTask,
    ViTMaskedAutoencoderTask,
)
from sarcomakit.tasks.scribbles import ScribbleSegmentationTask
from sarcomakit.tasks.segmentation import SegmentationTask

if TYPE_CHECKING:
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.runs.config import TrainConfig

__all__ = ["TASKS", "CaseOutput", "LossOutput", "Objective", "Task", "TaskRequirements", "build_task",
           "task_class", "task_options"]

TASKS.add(SegmentationTask.name, SegmentationTask)
TASKS.add(MultiTaskTask.name, MultiTaskTask)
TASKS.add(MaskedAutoencoderTask.name, MaskedAutoencoderTask)
TASKS.add(CrossModalMaskedAutoencoderTask.name, CrossModalMaskedAutoencoderTask)
TASKS.add(InteractiveTask.name, InteractiveTask)
TASKS.add(ViTMaskedAutoencoderTask.name, ViTMaskedAutoencoderTask)
TASKS.add(SimMIMTask.name, SimMIMTask)
TASKS.add(ScribbleSegmentationTask.name, ScribbleSegmentationTask)


def task_class(name: str) -> type[Task]:
    """The task class registered as ``name`` (a user error listing the tasks when unknown)."""
    return TASKS.get(name)


def task_options(name: str) -> dict[str, tuple[object, str]]:
    """The options of a task: name -> (default, help), from its constructor and its docstring's ``Args``."""
    cls = task_class(name)
    doc = inspect.getdoc(cls) or ""
    helps = dict(re.findall(r"^\s{4}(\w+(?:, \w+)*): (.+(?:\n\s{8}.+)*)", doc, flags=re.MULTILINE))
    expanded = {part.strip(): " ".join(text.split()) for names, text in helps.items() for part in names.split(",")}
    options = {}
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if parameter.name == "manifest" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        options[parameter.name] = (parameter.default, expanded.get(parameter.name, ""))
    return options


def _option_type(cls: type[Task], option: str) -> Any:
    """The annotated type of a constructor option (None when it cannot be resolved)."""
    annotation = inspect.get_annotations(cls.__init__).get(option)
    if isinstance(annotation, str):
        try:
            return eval(annotation, vars(sys.modules[cls.__module__]))  # noqa: S307 (the class's own annotation)
        except NameError:
            return None
    return annotation


def build_task(config: TrainConfig, manifest: Manifest | None = None) -> Task:
    """The task named by ``config.task``, built with ``config.task_options`` (and the cohort, for its targets)."""
    cls = task_class(config.task)
    known = task_options(config.task)
    unknown = sorted(set(config.task_options) - set(known))
    if unknown:
        raise UserInputError(f"task '{config.task}' has no option {', '.join(unknown)}.",
                             fix=f"use {', '.join(known) or 'no options'} (see 'sarcomakit tasks').")
    options = {}
    for key, value in config.task_options.items():
        try:
            hint = _option_type(cls, key)
            options[key] = TypeAdapter(hint).validate_python(value) if hint is not None else value
        except ValidationError as exc:
            raise UserInputError(f"task option {key}={value!r} is invalid ({exc.errors()[0]['msg']}).",
                                 fix=f"see 'sarcomakit tasks' for what {config.task} accepts.") from None
    return cls(manifest=manifest, **options)
