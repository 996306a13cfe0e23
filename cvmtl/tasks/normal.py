"""``normal``: unit surface normals (camera frame; all-zero = no label)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cvmtl.loss_terms import normal_terms, normal_valid
from cvmtl.png_codec import encode_normals
from cvmtl.scoring.normals import NormalMetric
from cvmtl.tasks.colorize import angle_error_deg, colorize_normal
from cvmtl.tasks.registry import register
from cvmtl.tasks.spec import NORMAL, Info, TaskSpec

NORMAL_METRICS = {
    "mean": False, "median": False, "rmse": False, "a11": True, "a22": True, "a30": True,
}  # fmt: skip


def unit(x: torch.Tensor, model_cfg: object = None) -> torch.Tensor:
    return F.normalize(x.float(), dim=1, eps=1e-6)


def channels_last_image(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, H, W, 3]."""
    return x.permute(0, 2, 3, 1)


def encode_unit(pred: np.ndarray, info: Info) -> dict[str, np.ndarray]:
    return {"": encode_normals(pred), "_color": colorize_normal(pred)}


def mean_angle(pred: np.ndarray, target: np.ndarray) -> str | None:
    angle, valid = angle_error_deg(pred, target)
    if not valid.any():
        return None
    return f"mean angle {float(angle[valid].mean()):.1f}°"


NORMAL_TASK = register(
    TaskSpec(
        name="normal",
        title="surface normals",
        label=NORMAL,
        channels=3,
        loss=lambda pred, target, labeled, cfg: normal_terms(
            pred, target, labeled, cfg.loss.normal
        ),
        loss_weights=lambda target, labeled, cfg: normal_valid(target, labeled),
        metric=lambda num_classes, ev: NormalMetric(),
        metrics=NORMAL_METRICS,
        delta_metrics={"mean": False, "median": False, "a11": True, "a22": True, "a30": True},
        activate=unit,
        fp32_head=True,
        probabilities=unit,
        predict=channels_last_image,
        colorize=lambda normal, info: colorize_normal(normal),
        encode=encode_unit,
        summary=mean_angle,
    )
)
