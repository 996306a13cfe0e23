"""Tasks: one :class:`TaskSpec` per task drives heads, losses, metrics, delta_m, augmentation,
panels and files. Built-in: seg, depth, normal, edge, saliency, parts. Add your own with
``cvmtl.tasks.register(TaskSpec(...))`` in a module named by the config key ``task_modules``."""

# The registry comes first: the built-in specs import leaf modules whose packages ask it.
from cvmtl.tasks.registry import (  # noqa: I001
    TASKS,
    get_task,
    higher_is_better,
    import_task_modules,
    register,
    task_names,
)
from cvmtl.tasks.spec import LabelKind, TaskSpec
from cvmtl.tasks import builtin  # noqa: F401  (registers the built-in tasks)

__all__ = [
    "TASKS", "LabelKind", "TaskSpec", "get_task", "higher_is_better", "import_task_modules",
    "register", "task_names",
]  # fmt: skip
