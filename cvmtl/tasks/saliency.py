"""``saliency``: the salient-object mask (PASCAL-Context's distilled saliency), 1-channel logits.

Loss: BCE, the mean over known pixels (:func:`cvmtl.loss_terms.bce_terms`). Metric:
:class:`cvmtl.scoring.saliency.SaliencyMetric`: ``maxf`` (F-beta, beta^2 = 0.3, counts in
delta_m) and ``miou``.
"""

from __future__ import annotations

import numpy as np

from cvmtl.loss_terms import bce_terms
from cvmtl.scoring.saliency import SaliencyMetric
from cvmtl.tasks.binary import binary_task, positives_at_half
from cvmtl.tasks.registry import register
from cvmtl.tasks.spec import BINARY


def iou_at_half(pred: np.ndarray, target: np.ndarray) -> str | None:
    p, t = positives_at_half(pred, target)
    if t.size == 0:
        return None
    union = int((p | t).sum())
    iou = 100.0 * int((p & t).sum()) / union if union else 100.0
    return f"IoU@0.5 {iou:.1f}%"


SALIENCY = register(
    binary_task(
        name="saliency",
        title="saliency",
        label=BINARY,
        loss=lambda pred, target, labeled, cfg: bce_terms(pred, target, labeled),
        metric=lambda num_classes, ev: SaliencyMetric(),
        metrics={"maxf": True, "miou": True},
        delta_metrics={"maxf": True},
        summary=iou_at_half,
    )
)
