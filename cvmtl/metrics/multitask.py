"""delta_m (Maninis et al.): mean signed relative change against single-task baselines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from cvmtl.tasks import get_task

Results = Mapping[str, Mapping[str, object]]


def delta_m(results: Results, baselines: Results, tasks: Iterable[str]) -> dict[str, object]:
    """``{"overall": x, "per_task": {task: x}, "per_metric": {"task/metric": x}}`` in percent.

    For each task, the mean over its delta_m metrics (``tasks.py``: LibMTL's set) of
    ``(+1 if higher is better else -1) * (result - baseline) / baseline * 100``; ``overall`` is
    the mean over tasks. Positive = better than the baselines. A missing metric or a zero
    baseline is a ValueError naming it.
    """
    per_metric: dict[str, float] = {}
    per_task: dict[str, float] = {}
    for task in tasks:
        spec = get_task(task)
        values = []
        for metric, higher in spec.delta_metrics.items():
            name = f"{task}/{metric}"
            try:
                result = float(results[task][metric])  # type: ignore[arg-type]
            except KeyError:
                raise ValueError(f"delta_m: results lack {name}") from None
            try:
                base = float(baselines[task][metric])  # type: ignore[arg-type]
            except KeyError:
                raise ValueError(f"delta_m: baselines lack {name}") from None
            if base == 0:
                raise ValueError(f"delta_m: baseline {name} is 0 (relative change undefined)")
            sign = 1.0 if higher else -1.0
            per_metric[name] = sign * (result - base) / base * 100.0
            values.append(per_metric[name])
        per_task[task] = sum(values) / len(values)
    if not per_task:
        raise ValueError("delta_m: no tasks given")
    overall = sum(per_task.values()) / len(per_task)
    return {"overall": overall, "per_task": per_task, "per_metric": per_metric}
