"""The demo's outputs: trivial floors, prediction panels + curves, and the summary table.

The floors say whether a model learned anything: a per-pixel colour classifier for seg
(:func:`cvmtl.data.synthetic.colour_only_miou`), and "predict the mean" for depth and normals
(the per-pixel mean of the train split, which already knows the room layout's average).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvmtl.config import Config
from cvmtl.tasks import get_task

FMT = {"miou": ".2f", "pixel_acc": ".2f", "abs_err": ".4f", "rel_err": ".4f"}


def _read_split(root: Path, split: str, what: str) -> list[np.ndarray]:
    from cvmtl.data.io import read_depth_png, read_normal_png, read_split

    ids = read_split(root / "splits" / f"{split}.txt")
    if what == "depth":
        return [read_depth_png(root / "depth" / f"{i}.png", i) for i in ids]
    return [read_normal_png(root / "normals" / f"{i}.png", i) for i in ids]


def compute_floors(cfg: Config) -> dict[str, dict[str, float]]:
    """``{task: {metric: value}}`` of the trivial predictors on the test split (cvmtl format)."""
    from cvmtl.metrics import DepthMetric, NormalMetric

    root, floors = Path(cfg.data.root), {}
    train, test = cfg.data.train_split, cfg.data.test_split
    if "seg" in cfg.tasks:
        from cvmtl.data.synthetic import colour_only_miou

        floors["seg"] = {"miou": colour_only_miou(root, train, test)[0]}
    if "depth" in cfg.tasks:
        depths = np.stack(_read_split(root, train, "depth"))
        valid = depths > 0
        mean = np.where(valid, depths, 0).sum(0) / np.maximum(valid.sum(0), 1)
        mean = np.where(valid.any(0), mean, depths[valid].mean()).astype(np.float32)
        metric = DepthMetric()
        for target in _read_split(root, test, "depth"):
            metric.update(torch.from_numpy(mean)[None, None], torch.from_numpy(target)[None, None])
        floors["depth"] = metric.compute()
    if "normal" in cfg.tasks:
        mean = np.stack(_read_split(root, train, "normal")).sum(0)  # invalid pixels are zeros
        mean = torch.from_numpy(mean.astype(np.float32)).permute(2, 0, 1)[None]
        metric = NormalMetric()
        for target in _read_split(root, test, "normal"):
            metric.update(mean, torch.from_numpy(target).permute(2, 0, 1)[None])
        floors["normal"] = metric.compute()
    return floors


def write_visuals(cfg: Config, num: int = 8) -> Path:
    """Panels + a contact sheet of ``num`` test samples and the training curves -> run/vis/.

    The same figures as ``tools/visualize.py --checkpoint best.pt --split test`` and
    ``--run``, drawn with a progress bar.
    """
    from cvmtl.vis.curves import plot_curves, read_metrics
    from cvmtl.vis.visualize import write_panels

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
