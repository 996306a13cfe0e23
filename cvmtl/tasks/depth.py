"""``depth``: metric depth in metres (0 = no measurement), ``(0, model.max_depth)`` by a sigmoid."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cvmtl.loss_terms import depth_normal_terms, depth_terms, depth_valid
from cvmtl.png_codec import encode_depth
from cvmtl.scoring.depth import DepthMetric
from cvmtl.tasks.colorize import colorize_depth
from cvmtl.tasks.registry import register
from cvmtl.tasks.spec import DEPTH, Info, TaskSpec

DEPTH_METRICS = {
    "abs_err": False, "rel_err": False, "sq_rel": False, "rmse": False, "log_rmse": False,
    "delta1": True, "delta2": True, "delta3": True,
}  # fmt: skip


def bounded_depth(x: torch.Tensor, model_cfg: Any) -> torch.Tensor:
    """``max_depth * sigmoid``, strictly positive (float32 sigmoid underflows near -87)."""
    max_depth = float(getattr(model_cfg, "max_depth", 10.0))
    return (max_depth * torch.sigmoid(x)).clamp_min(1e-6)


def first_channel(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] -> [B, H, W]."""
    return x[:, 0]


def encode_metres(pred: np.ndarray, info: Info) -> dict[str, np.ndarray]:
    return {"": encode_depth(pred), "_color": colorize_depth(pred)}


def abs_error(pred: np.ndarray, target: np.ndarray) -> str | None:
    valid = target > 0
    if not valid.any():
        return None
    return f"abs err {float(np.abs(pred - target)[valid].mean()):.3f} m"


def metric_range(ev: Any) -> dict[str, float]:
    """The depth range the metric scores (``eval.min_depth`` / ``eval.max_depth``)."""
    return {
        "min_depth": getattr(ev, "min_depth", 1e-3),
        "max_depth": getattr(ev, "max_depth", 10.0),
    }


DEPTH_TASK = register(
    TaskSpec(
        name="depth",
        title="depth",
        label=DEPTH,
        channels=1,
        loss=lambda pred, target, labeled, cfg: depth_terms(pred, target, labeled, cfg.loss.depth),
        loss_weights=lambda target, labeled, cfg: depth_valid(target, labeled),
        metric=lambda num_classes, ev: DepthMetric(**metric_range(ev)),
        metrics=DEPTH_METRICS,
        delta_metrics={"abs_err": False, "rel_err": False},
        activate=bounded_depth,
        fp32_head=True,
        predict=first_channel,
        colorize=lambda depth, info: colorize_depth(depth),
        encode=encode_metres,
        summary=abs_error,
        extras={
            "silog": lambda cfg: cfg.loss.depth == "silog",
            # loss.consistency.depth_normal: the prediction against the normal labels
            "consistency": {"depth_normal": ("normal", depth_normal_terms)},
        },
    )
)
