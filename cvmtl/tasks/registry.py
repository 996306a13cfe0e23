"""The task registry: built-in tasks and those a user's package registers."""

from __future__ import annotations

import importlib
from collections.abc import Iterable

from cvmtl.tasks.spec import TaskSpec

TASKS: dict[str, TaskSpec] = {}
DEFAULT_TASKS = ("seg", "depth", "normal")  # the config's default task list


def register(spec: TaskSpec, replace: bool = False) -> TaskSpec:
    """Add ``spec`` under its name (a name taken by another spec is an error unless ``replace``).
    Returns the spec, so a module can write ``MY_TASK = register(TaskSpec(...))``."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register: expected a TaskSpec, got {type(spec).__name__}")
    if not spec.name or "/" in spec.name:
        raise ValueError(f"register: bad task name {spec.name!r} (non-empty, no '/')")
    old = TASKS.get(spec.name)
    if old is not None and old is not spec and not replace:
        raise ValueError(f"register: task {spec.name!r} is already registered")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (available: {', '.join(TASKS)})")
    return TASKS[name]


def task_names() -> list[str]:
    return list(TASKS)


def higher_is_better(task: str, metric: str) -> bool:
    """Whether a larger value of ``task/metric`` is better; unknown metrics are a ValueError."""
    try:
        return get_task(task).metrics[metric]
    except (KeyError, ValueError):
        raise ValueError(f"unknown metric {task}/{metric}") from None


def import_task_modules(modules: Iterable[str]) -> None:
    """Import the user's modules that register tasks (config key ``task_modules``)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ValueError(f"task_modules: cannot import {name!r} ({err})") from None
