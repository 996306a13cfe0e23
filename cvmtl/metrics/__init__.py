"""Streaming, DDP-reduced metrics per task, and delta_m."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cvmtl.metrics.depth import DepthMetric
from cvmtl.metrics.multitask import delta_m
from cvmtl.metrics.normals import NormalMetric
from cvmtl.metrics.segmentation import SegMetric

Metric = SegMetric | DepthMetric | NormalMetric

__all__ = ["DepthMetric", "Metric", "NormalMetric", "SegMetric", "build_metrics", "delta_m"]


def build_metrics(tasks: Iterable[str], num_classes: int, cfg: Any = None) -> dict[str, Metric]:
    """One fresh metric per task. ``cfg``: a Config, its ``eval`` section or None (defaults);
    it supplies the depth range ``min_depth`` / ``max_depth``."""
    ev = getattr(cfg, "eval", cfg)
    min_depth = getattr(ev, "min_depth", 1e-3)
    max_depth = getattr(ev, "max_depth", 10.0)
    metrics: dict[str, Metric] = {}
    for task in tasks:
        if task == "seg":
            metrics[task] = SegMetric(num_classes)
        elif task == "depth":
            metrics[task] = DepthMetric(min_depth, max_depth)
        elif task == "normal":
            metrics[task] = NormalMetric()
        else:
            raise ValueError(f"build_metrics: no metric for task {task!r} (seg, depth, normal)")
    return metrics
