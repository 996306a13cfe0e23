"""The one place a task is defined: its name, output channels, loss and delta_m metrics."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """A dense prediction task.

    ``delta_metrics`` maps each metric that counts in delta_m (LibMTL's set) to whether higher is
    better. ``channels`` is the head's output channel count (``None``: the dataset's class count).
    """

    name: str
    channels: int | None
    delta_metrics: dict[str, bool]
    ignore_value: float  # fill value of a missing label, so default collation works

    def out_channels(self, num_classes: int) -> int:
        return num_classes if self.channels is None else self.channels


TASKS: dict[str, TaskSpec] = {
    "seg": TaskSpec("seg", None, {"miou": True, "pixel_acc": True}, 255),
    "depth": TaskSpec("depth", 1, {"abs_err": False, "rel_err": False}, 0.0),
    "normal": TaskSpec(
        "normal",
        3,
        {"mean": False, "median": False, "a11": True, "a22": True, "a30": True},
        0.0,
    ),
}

# Direction of every metric any task reports (for best-checkpoint selection and reports).
HIGHER_IS_BETTER: dict[str, dict[str, bool]] = {
    "seg": {"miou": True, "pixel_acc": True},
    "depth": {
        "abs_err": False,
        "rel_err": False,
        "sq_rel": False,
        "rmse": False,
        "log_rmse": False,
        "delta1": True,
        "delta2": True,
        "delta3": True,
    },
    "normal": {
        "mean": False,
        "median": False,
        "rmse": False,
        "a11": True,
        "a22": True,
        "a30": True,
    },
}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``name``; an unknown name is a ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (available: {', '.join(TASKS)})")
    return TASKS[name]


def higher_is_better(task: str, metric: str) -> bool:
    """Whether a larger value of ``task/metric`` is better; unknown metrics are a ValueError."""
    try:
        return HIGHER_IS_BETTER[task][metric]
    except KeyError:
        raise ValueError(f"unknown metric {task}/{metric}") from None
