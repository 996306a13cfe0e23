"""``seg``: semantic segmentation over the dataset's classes (``data.num_classes``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cvmtl.loss_terms import class_weights, seg_terms, seg_valid
from cvmtl.scoring.segmentation import SegMetric, class_labels, top_class
from cvmtl.tasks.colorize import colorize_seg
from cvmtl.tasks.registry import register
from cvmtl.tasks.spec import CLASSES, Info, TaskSpec


def class_ids(labels: np.ndarray, num_colours: int) -> np.ndarray:
    """Class ids in the smallest PNG integer type that holds them."""
    return labels.astype(np.uint8 if num_colours <= 255 else np.uint16)


def encode_classes(pred: np.ndarray, info: Info, palette: list | None = None) -> dict:
    palette = palette if palette is not None else info["palette"]
    return {"": class_ids(pred, len(palette)), "_color": colorize_seg(pred, palette)}


def pixel_accuracy(pred: np.ndarray, target: np.ndarray, ignore: int = 255) -> str | None:
    valid = target != ignore
    if not valid.any():
        return None
    return f"pixel acc {100.0 * float((target == pred)[valid].mean()):.1f}%"


def _loss(pred: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor, cfg: Any):
    return seg_terms(
        pred, target, labeled, class_weights(cfg, pred.device), cfg.loss.seg_label_smoothing
    )


def _weights(target: torch.Tensor, labeled: torch.Tensor, cfg: Any) -> torch.Tensor:
    valid = seg_valid(target, labeled)
    weights = class_weights(cfg, target.device)
    if weights is None:
        return valid
    return weights[torch.where(valid, target, torch.zeros_like(target)).long()] * valid


SEG = register(
    TaskSpec(
        name="seg",
        title="segmentation",
        label=CLASSES,
        channels=None,
        loss=_loss,
        loss_weights=_weights,
        metric=lambda num_classes, ev: SegMetric(num_classes),
        metrics={"miou": True, "pixel_acc": True},
        delta_metrics={"miou": True, "pixel_acc": True},
        probabilities=lambda logits: logits.float().softmax(dim=1),
        predict=top_class,
        decide=class_labels,
        colorize=lambda labels, info: colorize_seg(labels, info["palette"]),
        encode=encode_classes,
        summary=pixel_accuracy,
    )
)
