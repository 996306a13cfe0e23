"""Evaluation with report statistics: the metrics of ``evaluate`` plus streaming error histograms
(depth error by ground-truth distance, normal angle-error histogram) and a few samples.

The histograms live here, not in the metric classes: they are for reports only, and fixed bins
keep memory constant however large the split is.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.engine.evaluator import predict
from cvmtl.metrics import build_metrics
from cvmtl.precision import autocast_context, resolve_precision


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
        g = target.detach().double().flatten()
        p = pred.detach().double().flatten().clamp(self.min_depth, self.max_depth)
        valid = (g >= self.min_depth) & (g <= self.max_depth)
        g, p = g[valid].cpu(), p[valid].cpu()
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
        p = F.normalize(pred.detach().float(), dim=1)
        g = target.detach().float()
        valid = g.abs().sum(dim=1) > 0
        g = F.normalize(g, dim=1)
        cos = (p * g).sum(dim=1).clamp(-1.0, 1.0)[valid]
        ang = torch.rad2deg(torch.acos(cos)).double().cpu()
        n = len(self.count)
        idx = (ang / 180.0 * n).long().clamp_(0, n - 1)
        self.count += torch.bincount(idx, minlength=n).double()

    def compute(self) -> dict[str, list[float]]:
        """``edges`` (degrees) and ``count`` (pixels) per bin."""
        return {"edges": self.edges.tolist(), "count": self.count.tolist()}


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

    Same predictions as :func:`cvmtl.engine.evaluator.evaluate` (its ``predict``, TTA and scales
    included); single process. Samples: ``{"image", "target": {task}, "pred": {task}}`` CPU
    tensors (seg labels [H,W], depth [1,H,W], normal [3,H,W]) of the first ``num_samples``.
    """
    cfg = resolve_precision(cfg, device)  # train.amp / channels_last: auto -> this device's
    metrics = build_metrics(tasks, cfg.data.num_classes, cfg)
    stats: dict[str, Any] = {}
    if "depth" in tasks:
        stats["depth_bins"] = DepthBins(cfg.eval.min_depth, cfg.eval.max_depth)
    if "normal" in tasks:
        stats["angle_hist"] = AngleHistogram()
    samples: list[dict[str, Any]] = []
    autocast = autocast_context(cfg.train.amp, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i, batch in enumerate(_progress(loader, progress)):
                image = batch["image"].to(device)
                targets = _targets(batch, tasks, device)
                size = next(iter(targets.values())).shape[-2:]
                with autocast:
                    preds = predict(model, image, size, tasks, cfg, cfg.data.num_classes, i == 0)
                for task in tasks:
                    metrics[task].update(preds[task], targets[task])
                if "depth_bins" in stats:
                    stats["depth_bins"].update(preds["depth"], targets["depth"])
                if "angle_hist" in stats:
                    stats["angle_hist"].update(preds["normal"], targets["normal"])
                _collect(samples, num_samples, batch, targets, preds)
    finally:
        model.train(was_training)
    results = {task: metrics[task].compute() for task in tasks}
    return results, {k: v.compute() for k, v in stats.items()}, samples


def _progress(loader: Any, enabled: bool) -> Any:
    if not enabled:
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)


def _targets(batch: dict, tasks: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Targets with unlabeled samples (``has`` False) made invalid."""
    out = {}
    for task in tasks:
        if task not in batch:
            raise ValueError(f"evaluation: the dataset gives no {task!r} labels")
        t = batch[task].to(device)
        has = batch.get("has", {}).get(task)
        if has is not None and not bool(torch.as_tensor(has).all()):
            keep = torch.as_tensor(has).bool().to(device).view(-1, *[1] * (t.dim() - 1))
            t = torch.where(keep, t, torch.full_like(t, 255 if task == "seg" else 0))
        out[task] = t
    return out


def _collect(samples: list, limit: int, batch: dict, targets: dict, preds: dict) -> None:
    for i in range(batch["image"].shape[0]):
        if len(samples) >= limit:
            return
        pred = {}
        for task, p in preds.items():
            pred[task] = p[i].argmax(0).cpu() if task == "seg" else p[i].float().cpu()
        samples.append(
            {
                "image": batch["image"][i].float().cpu(),
                "target": {t: v[i].cpu() for t, v in targets.items()},
                "pred": pred,
            }
        )


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
