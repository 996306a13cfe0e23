"""Streaming, DDP-reduced metrics per task, and delta_m: the layer above :mod:`cvmtl.tasks`
that asks each task's spec. The metric classes themselves are leaves in :mod:`cvmtl.scoring`
(the specs compose them), re-exported here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cvmtl.metrics.multitask import delta_m
from cvmtl.scoring.depth import DepthMetric
from cvmtl.scoring.edge import EdgeMetric
from cvmtl.scoring.normals import NormalMetric
from cvmtl.scoring.saliency import SaliencyMetric
from cvmtl.scoring.segmentation import SegMetric
from cvmtl.tasks.registry import get_task

Metric = Any  # any streaming metric: update(pred, target), compute() -> {name: value}

__all__ = [
    "DepthMetric", "EdgeMetric", "Metric", "NormalMetric", "SaliencyMetric", "SegMetric",
    "build_metrics", "delta_m",
]  # fmt: skip


def build_metrics(tasks: Iterable[str], num_classes: int, cfg: Any = None) -> dict[str, Metric]:
    """One fresh metric per task, ``spec.metric(output channels, eval cfg)``. ``cfg``: a Config,
    its ``eval`` section or None (the metrics' defaults, e.g. depth range ``min_depth`` /
    ``max_depth``); ``num_classes`` is the dataset's class count (tasks with ``channels=None``)."""
    ev = getattr(cfg, "eval", cfg)
    metrics: dict[str, Metric] = {}
    for task in tasks:
        spec = get_task(task)
        metrics[task] = spec.metric(spec.out_channels(num_classes), ev)
    return metrics
