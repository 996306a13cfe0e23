"""``disparity``: stereo disparity (Cityscapes; mtan / LibMTL call their copy "depth"), 0 = invalid.

Units are the dataset's (pixels in the official Cityscapes files; mtan's preprocessed copy is
scaled down). The head is ``softplus``: positive and free of a preset range, since the two
Cityscapes copies differ in scale. Loss: L1 over valid pixels (mtan / LibMTL). Metrics: those of
``depth`` (:class:`cvmtl.scoring.depth.DepthMetric`, range ``(0, eval.max_disparity]``, default
1e4), ``abs_err`` and ``rel_err`` count in delta_m. Files: uint16 PNG ``round(256 d) + 1`` (0 =
invalid), the Cityscapes disparity encoding, plus a colour map.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cvmtl.loss_terms import depth_terms, depth_valid
from cvmtl.scoring.depth import DepthMetric
from cvmtl.tasks.colorize import colorize_depth
from cvmtl.tasks.depth import DEPTH_METRICS, first_channel
from cvmtl.tasks.registry import register
from cvmtl.tasks.spec import DISPARITY, Info, TaskSpec

MAX_DISPARITY = 1e4  # the metric's clamp: far above any disparity in pixels


def positive(x: torch.Tensor, model_cfg: Any = None) -> torch.Tensor:
    """``softplus`` in float32, at least 1e-6."""
    return F.softplus(x.float()).clamp_min(1e-6)


def encode_disparity(pred: np.ndarray, info: Info) -> dict[str, np.ndarray]:
    d = np.asarray(pred, np.float64)
    valid = np.isfinite(d) & (d > 0)
    value = np.clip(np.round(np.where(valid, d, 0.0) * 256.0) + 1, 1, 65535)
    return {"": np.where(valid, value, 0).astype(np.uint16), "_color": colorize_depth(pred)}


def mean_abs_error(pred: np.ndarray, target: np.ndarray) -> str | None:
    valid = np.asarray(target) > 0
    if not valid.any():
        return None
    return f"abs err {float(np.abs(np.asarray(pred) - target)[valid].mean()):.3g}"


DISPARITY_TASK = register(
    TaskSpec(
        name="disparity",
        title="disparity",
        label=DISPARITY,
        channels=1,
        loss=lambda pred, target, labeled, cfg: depth_terms(pred, target, labeled, "l1"),
        loss_weights=lambda target, labeled, cfg: depth_valid(target, labeled).float(),
        metric=lambda num_classes, ev: DepthMetric(
            0.0, float(getattr(ev, "max_disparity", MAX_DISPARITY))
        ),
        metrics=DEPTH_METRICS,
        delta_metrics={"abs_err": False, "rel_err": False},
        activate=positive,
        fp32_head=True,
        predict=first_channel,
        colorize=lambda disparity, info: colorize_depth(disparity),
        encode=encode_disparity,
        summary=mean_abs_error,
    )
)
