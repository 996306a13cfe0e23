"""The demo's outputs: trivial floors, prediction panels + curves, and the summary table.

The floors say whether a model learned anything, by label kind (:func:`floor_kind`): a
per-pixel colour classifier for the dataset's classes (:func:`cvmtl.data.synthetic.
colour_only_miou`), and "predict the mean" for float labels such as depth and normals (the
per-pixel mean of the train split, which already knows the room layout's average). A task can
bring its own: ``extras["floor"](cfg, task) -> {metric: value}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cvmtl.config import Config
from cvmtl.tasks import get_task
from cvmtl.tasks.spec import CLASSES

FMT = {"miou": ".2f", "pixel_acc": ".2f", "abs_err": ".4f", "rel_err": ".4f"}


def _labels(cfg: Config, split: str, task: str) -> list[np.ndarray]:
    """The raw labels of ``task`` on ``split`` (missing ones filled), through the data format."""
    from cvmtl.data.formats import list_ids, load_sample

    root, fmt, n = cfg.data.root, cfg.data.format, cfg.data.num_classes
    return [load_sample(root, fmt, split, i, [task], n)[task] for i in list_ids(root, fmt, split)]


def colour_floor(cfg: Config, task: str) -> dict[str, float]:
    """The synthetic scenes' colour-only classifier (for the dataset's own classes)."""
    from cvmtl.data.synthetic import colour_only_miou

    return {"miou": colour_only_miou(Path(cfg.data.root), cfg.data.train_split,
                                     cfg.data.test_split)[0]}  # fmt: skip


def mean_floor(cfg: Config, task: str) -> dict[str, float]:
    """Predict the per-pixel mean of the train labels (labelled pixels only; a pixel never
    labelled gets the overall mean of a scalar, the zero vector of a vector label)."""
    spec = get_task(task)
    fill = spec.label.fill
    train = np.stack(_labels(cfg, cfg.data.train_split, task)).astype(np.float64)
    known = train != fill if train.ndim == 3 else np.any(train != fill, axis=3, keepdims=True)
    count = known.sum(0)
    mean = np.where(known, train, 0.0).sum(0) / np.maximum(count, 1)
    if spec.label.channels == 1:
        mean = np.where(count > 0, mean, train[known].mean() if known.any() else fill)
    pred = spec.label.to_tensor(mean.astype(np.float32))[None]
    metric = spec.metric(spec.out_channels(cfg.data.num_classes), cfg.eval)
    for target in _labels(cfg, cfg.data.test_split, task):
        metric.update(pred, spec.label.to_tensor(target)[None])
    return metric.compute()


def floor_kind(task: str) -> Any:
    """The trivial predictor of a task by label kind (None: no floor): the colour classifier
    for the dataset's classes, the train mean for float labels (``extras["floor"]`` wins)."""
    spec = get_task(task)
    if "floor" in spec.extras:
        return spec.extras["floor"]
    if spec.label == CLASSES and spec.channels is None:
        return colour_floor
    return None if spec.label.integer else mean_floor


def compute_floors(cfg: Config) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of the trivial predictors on the test split (cvmtl format)."""
    floors = {}
    for task in cfg.tasks:
        floor = floor_kind(task)
        if floor is not None:
            floors[task] = floor(cfg, task)
    return floors


def write_visuals(cfg: Config, num: int = 8) -> Path:
    """Panels + a contact sheet of ``num`` test samples and the training curves -> run/vis/.

    The same figures as ``tools/visualize.py --checkpoint best.pt --split test`` and
    ``--run``, drawn with a progress bar.
    """
    from cvmtl.vis.curves import plot_curves, read_metrics
    from cvmtl.workflows.visualize import write_panels

    out, _ = write_panels(
        cfg.run_dir / "best.pt", "test", num, cfg.run_dir / "vis", device="cpu", progress=True
    )
    plot_curves(read_metrics(cfg.run_dir), out / "curves.png", title=cfg.name)
    return out


def _fmt(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(float(value)):
        return "-"
    return format(float(value), FMT.get(metric, ".2f"))


def format_summary(
    metrics: dict[str, Any],
    baselines: dict[str, dict[str, float]],
    floors: dict[str, dict[str, float]],
    tasks: list[str],
) -> str:
    """A plain-text table: per task and delta_m metric, trivial floor | single-task |
    multi-task | relative change (%, + = multi-task better), then delta_m per task and overall.
    ``metrics`` is metrics.json's content."""
    results, dm = metrics["metrics"], metrics.get("delta_m") or {}
    per_metric = dm.get("per_metric", {})
    head = f"{'task':7s} {'metric':12s} {'floor':>9s} {'single':>9s} {'multi':>9s} {'change':>8s}"
    lines = [head, "-" * len(head)]
    for task in tasks:
        for metric, higher in get_task(task).delta_metrics.items():
            floor = floors.get(task, {}).get(metric)
            single = baselines.get(task, {}).get(metric)
            multi = results.get(task, {}).get(metric)
            change = per_metric.get(f"{task}/{metric}")
            arrow = "^" if higher else "v"
            lines.append(
                f"{task:7s} {metric + ' ' + arrow:12s} {_fmt(metric, floor):>9s} "
                f"{_fmt(metric, single):>9s} {_fmt(metric, multi):>9s} "
                f"{'-' if change is None else format(change, '+.2f'):>8s}"
            )
        if task in dm.get("per_task", {}):
            lines.append(f"{task:7s} {'delta_m':12s} {'':>9s} {'':>9s} {'':>9s} "
                         f"{dm['per_task'][task]:>+8.2f}")  # fmt: skip
        lines.append("")
    if "overall" in dm:
        lines.append(f"delta_m (multi-task vs single-task, test split): {dm['overall']:+.2f}%")
    else:
        lines.append("delta_m: baselines missing")
    lines.append("(^ higher is better, v lower is better; floor = colour-only / per-pixel mean)")
    return "\n".join(lines)
