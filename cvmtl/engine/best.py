"""Choosing best.pt while training: the selection rule plus baselines.json and resume state."""

from __future__ import annotations

import json
from pathlib import Path

from cvmtl.engine.selection import BestSoFar
from cvmtl.metrics import delta_m as delta_m_of
from cvmtl.tasks import TASKS, get_task


def _zero_baselines(baselines: dict | None) -> list[str]:
    """Names of delta_m metrics whose baseline is 0 (delta_m divides by the baseline)."""
    if not baselines:
        return []
    return [
        f"{task}/{metric}"
        for task, values in baselines.items()
        if task in TASKS
        for metric in get_task(task).delta_metrics
        if values.get(metric) == 0
    ]


class BestTracker(BestSoFar):
    """Chooses ``best.pt`` on the validation split by ``train.best_metric``.

    The rule is :class:`cvmtl.engine.selection.BestSoFar` (as :func:`select_best` offline); this
    adds the run folder's baselines and the checkpoint state. ``task/metric`` uses that metric's
    direction from :mod:`cvmtl.tasks`. ``delta_m`` needs ``baselines.json`` in the run folder;
    without it selection falls back to the first task's first delta_m metric (``seg/miou`` for
    the default tasks), and :attr:`note` says so.
    """

    key = "train.best_metric"

    def __init__(self, best_metric: str, tasks: list[str], run_dir: Path, val_split: str):
        self.path = run_dir / "baselines.json"
        baselines = load_baselines(self.path, val_split, tasks)
        self.note = ""
        zero = _zero_baselines(baselines)
        if best_metric == "delta_m" and (baselines is None or zero):
            task = tasks[0]
            metric = next(iter(get_task(task).delta_metrics))
            why = f"has 0 for {zero} (relative change undefined)" if zero else "has no"
            self.note = (
                f"train.best_metric=delta_m but {self.path} {why} "
                f"'{val_split}' baselines for {tasks}: choosing best.pt by {task}/{metric}"
            )
            baselines = None
            best_metric = f"{task}/{metric}"
        task = best_metric.split("/", 1)[0]
        if best_metric != "delta_m" and task not in tasks:
            raise ValueError(f"train.best_metric={best_metric}: task {task!r} not trained")
        super().__init__(best_metric, tasks, baselines)

    def delta_m(self, results: dict, split: str | None = None) -> dict | None:
        """delta_m of ``results`` against the baselines of ``split`` (default: validation);
        None without baselines for that split."""
        base = self.baselines if split is None else load_baselines(self.path, split, self.tasks)
        if base is None:
            return None
        if _zero_baselines(base):
            return None  # a zero baseline makes the relative change undefined
        return delta_m_of(results, base, self.tasks)

    def state_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("metric") == self.metric:  # a changed best_metric starts a fresh search
            self.value, self.step = state.get("value"), state.get("step")


def load_baselines(path: Path, split: str, tasks: list[str]) -> dict | None:
    """``{task: {metric: value}}`` for ``split`` from baselines.json, or None if unusable."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    per_split = data.get(split)
    if not isinstance(per_split, dict) or any(t not in per_split for t in tasks):
        return None
    return per_split
