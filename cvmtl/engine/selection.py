"""The best-checkpoint rule, and picking the best entry of a finished validation history.

:class:`BestSoFar` is the one rule: a value under ``best_metric`` (``delta_m`` or
``task/metric``, with that metric's direction from :mod:`cvmtl.tasks`) replaces the best so far
only when strictly better, so ties keep the earlier entry and NaN never wins. The training loop
applies it as it goes (:class:`cvmtl.engine.best.BestTracker`, which adds baselines.json and
the checkpoint state); :func:`select_best` applies it offline to a history (e.g. metrics.jsonl),
for reports, tests and re-selection under another metric.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cvmtl.metrics import delta_m
from cvmtl.tasks import higher_is_better

Results = Mapping[str, Mapping[str, Any]]


class BestSoFar:
    """The best value seen under ``metric``; ``delta_m`` scores need ``baselines``."""

    #: how errors name the setting (the training loop's is ``train.best_metric``)
    key = "best_metric"

    def __init__(self, metric: str, tasks: Sequence[str], baselines: Results | None = None) -> None:
        self.metric = metric
        self.tasks = list(tasks)
        self.baselines = baselines
        if metric == "delta_m":
            self.higher = True
        else:
            self.higher = higher_is_better(*metric.split("/", 1))
        self.value: float | None = None
        self.step: int | None = None

    def value_of(self, results: Results, dm: Mapping[str, Any] | None = None) -> float:
        """The score of ``results`` (``{task: {metric: v}}``); for ``delta_m`` the given
        ``dm`` (a :func:`cvmtl.metrics.delta_m` result), else one against the baselines."""
        if self.metric == "delta_m":
            if dm is None:
                if self.baselines is None:
                    raise ValueError(f"{self.key}=delta_m needs baselines")
                dm = delta_m(results, self.baselines, self.tasks)
            return float(dm["overall"])
        task, name = self.metric.split("/", 1)
        if name not in results.get(task, {}):
            raise ValueError(f"{self.key}={self.metric}: the results report no {task}/{name}")
        return float(results[task][name])

    def update(self, value: float, step: int | None) -> bool:
        """Record ``value``; True when it is the best so far (NaN never is, ties keep the
        earlier one)."""
        if math.isnan(value):
            return False
        better = self.value is None or (value > self.value if self.higher else value < self.value)
        if better:
            self.value, self.step = value, step
        return better


def nest(flat: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{"task/metric": v}`` (a metrics.jsonl record) -> ``{task: {metric: v}}``; other keys
    (step, split, loss/..., lr) are dropped."""
    out: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        if "/" not in key or key.split("/", 1)[0] in ("loss", "weight"):
            continue
        task, metric = key.split("/", 1)
        try:
            out.setdefault(task, {})[metric] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def select_best(
    history: Sequence[Mapping[str, Any]],
    best_metric: str,
    tasks: Sequence[str],
    baselines: Results | None = None,
) -> dict[str, Any]:
    """The best entry of ``history`` -> ``{"index", "step", "value"}``.

    Each entry is ``{"step": s, "results": {task: {metric: v}}}`` or a flat metrics.jsonl record
    (``{"step": s, "seg/miou": v, ...}``). The training loop's rule (:class:`BestSoFar`).
    ValueError when no entry has a score that is not NaN.
    """
    best, index = BestSoFar(best_metric, tasks, baselines), None
    for i, entry in enumerate(history):
        if best.update(best.value_of(entry.get("results") or nest(entry)), entry.get("step")):
            index = i
    if index is None:
        raise ValueError(f"select_best: no entry with a finite {best_metric}")
    return {"index": index, "step": best.step, "value": best.value}


def val_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``split == "val"`` records of ``run_dir/metrics.jsonl``, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("split") == "val"]
