"""Pick the best checkpoint from a history of validation results (offline, e.g. metrics.jsonl).

The training loop chooses ``best.pt`` as it goes (:class:`cvmtl.engine.runstate.BestTracker`);
this is the same rule written as a pure function over a finished history, for reports, tests and
re-selection under another metric.
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


def score(results: Results, best_metric: str, tasks: Sequence[str], baselines: Results | None):
    """(value, higher_is_better) of ``results`` under ``best_metric`` (``delta_m`` or
    ``task/metric``). ``delta_m`` needs ``baselines`` ({task: {metric: value}})."""
    if best_metric == "delta_m":
        if baselines is None:
            raise ValueError("best_metric=delta_m needs baselines")
        return float(delta_m(results, baselines, tasks)["overall"]), True
    task, metric = best_metric.split("/", 1)
    return float(results[task][metric]), higher_is_better(task, metric)


def select_best(
    history: Sequence[Mapping[str, Any]],
    best_metric: str,
    tasks: Sequence[str],
    baselines: Results | None = None,
) -> dict[str, Any]:
    """The best entry of ``history`` -> ``{"index", "step", "value"}``.

    Each entry is ``{"step": s, "results": {task: {metric: v}}}`` or a flat metrics.jsonl record
    (``{"step": s, "seg/miou": v, ...}``). Ties keep the earlier entry and NaN never wins, as in
    the training loop. ValueError when no entry has a finite score.
    """
    best: dict[str, Any] | None = None
    for i, entry in enumerate(history):
        results = entry.get("results") or nest(entry)
        value, higher = score(results, best_metric, tasks, baselines)
        if math.isnan(value):
            continue
        if best is None or (value > best["value"] if higher else value < best["value"]):
            best = {"index": i, "step": entry.get("step"), "value": value}
    if best is None:
        raise ValueError(f"select_best: no entry with a finite {best_metric}")
    return best


def val_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``split == "val"`` records of ``run_dir/metrics.jsonl``, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("split") == "val"]
