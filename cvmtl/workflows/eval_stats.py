"""Evaluation with report statistics: the metrics of ``evaluate`` plus streaming error histograms
(depth error by ground-truth distance, normal angle-error histogram) and a few samples.

The histograms live here, not in the metric classes: they are for reports only, and fixed bins
keep memory constant however large the split is. They plug into the one evaluation loop
(:func:`cvmtl.engine.evaluator.evaluate`) as an extra evaluator, detectron2-style, and score
non-finite predictions by the metrics' worst-case rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cvmtl.engine.evaluator import evaluate
from cvmtl.scoring.depth import scored_depth
from cvmtl.scoring.normals import scored_angles
from cvmtl.tasks import get_task
from cvmtl.tasks.spec import DEPTH


class DepthBins:
    """Absolute / relative depth error binned by ground-truth depth over [min, max] metres.

    Valid pixels and clamping follow DepthMetric (``min_depth <= target <= max_depth``, the
    prediction clamped to that range first).
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, num_bins: int = 20):
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.edges = torch.linspace(0.0, self.max_depth, num_bins + 1, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        n = len(self.edges) - 1
        self.count = torch.zeros(n, dtype=torch.float64)
        self.abs_sum = torch.zeros(n, dtype=torch.float64)
        self.rel_sum = torch.zeros(n, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, g, valid, _ = scored_depth(
            pred.detach(), target.detach(), self.min_depth, self.max_depth
        )
        g, p = g[valid].double().cpu(), p[valid].double().cpu()
        n = len(self.count)
        idx = (g / self.max_depth * n).long().clamp_(0, n - 1)
        err = (p - g).abs()
        self.count += torch.bincount(idx, minlength=n).double()
        self.abs_sum += torch.bincount(idx, weights=err, minlength=n)
        self.rel_sum += torch.bincount(idx, weights=err / g, minlength=n)

    def compute(self) -> dict[str, list[float | None]]:
        """``edges`` (metres), ``count`` (pixels), mean ``abs_err`` / ``rel_err`` per bin
        (None for an empty bin)."""

        def mean(s: torch.Tensor) -> list[float | None]:
            return [float(a / c) if c > 0 else None for a, c in zip(s, self.count)]

        return {
            "edges": self.edges.tolist(),
            "count": self.count.tolist(),
            "abs_err": mean(self.abs_sum),
            "rel_err": mean(self.rel_sum),
        }


class AngleHistogram:
    """Histogram of the normal angle error (degrees, 0..180) on pixels with a non-zero target."""

    def __init__(self, bin_deg: float = 1.0):
        self.edges = torch.arange(0.0, 180.0 + bin_deg / 2, bin_deg, dtype=torch.float64)
        self.reset()

    def reset(self) -> None:
        self.count = torch.zeros(len(self.edges) - 1, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        ang, valid, _ = scored_angles(pred.detach(), target.detach())
        ang = ang[valid].double().cpu()
        n = len(self.count)
        idx = (ang / 180.0 * n).long().clamp_(0, n - 1)
        self.count += torch.bincount(idx, minlength=n).double()

    def compute(self) -> dict[str, list[float]]:
        """``edges`` (degrees) and ``count`` (pixels) per bin."""
        return {"edges": self.edges.tolist(), "count": self.count.tolist()}


def report_histograms(tasks: list[str], cfg: Any) -> dict[str, tuple[str, Any]]:
    """``{stat name: (task, histogram)}`` by label kind: depth error by distance for the first
    depth-labelled task, the angle-error histogram for the first unit-vector task."""
    parts: dict[str, tuple[str, Any]] = {}
    for task in tasks:
        label = get_task(task).label
        if label == DEPTH and "depth_bins" not in parts:
            parts["depth_bins"] = (task, DepthBins(cfg.eval.min_depth, cfg.eval.max_depth))
        elif label.unit_vector and label.channels == 3 and "angle_hist" not in parts:
            parts["angle_hist"] = (task, AngleHistogram())
    return parts


class ReportStats:
    """The report's histograms as an evaluator of the evaluation loop: ``update(preds,
    targets)`` per batch, ``compute()`` -> ``{"depth_bins", "angle_hist"}`` (those it has)."""

    def __init__(self, tasks: list[str], cfg: Any) -> None:
        self.parts = report_histograms(tasks, cfg)

    def update(self, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> None:
        for task, part in self.parts.values():
            part.update(preds[task], targets[task])

    def compute(self) -> dict[str, Any]:
        return {name: part.compute() for name, (_, part) in self.parts.items()}


def evaluate_with_stats(
    model: nn.Module,
    loader: Any,
    tasks: list[str],
    cfg: Any,
    device: torch.device,
    num_samples: int = 4,
    progress: bool = True,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """(metrics ``{task: {metric: v}}``, stats ``{"depth_bins", "angle_hist"}``, samples).

    :func:`cvmtl.engine.evaluator.evaluate` with :class:`ReportStats` plugged in; samples are
    its collected ones (``{"image", "meta", "has", "target": {task}, "pred": {task}}`` CPU
    tensors) of the first ``num_samples``.
    """
    stats = ReportStats(tasks, cfg)
    samples: list[dict[str, Any]] = []
    results = evaluate(
        model, loader, tasks, cfg, device=device, progress=progress,
        collect=num_samples, samples=samples, evaluators=[stats],
    )  # fmt: skip
    return results, stats.compute(), samples


def nan_to_none(value: Any) -> Any:
    """JSON-safe copy: NaN / inf floats become None, tensors become lists."""
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    if torch.is_tensor(value):
        return nan_to_none(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
