"""``parts``: human parts on PASCAL-Context (7 classes of its own, whatever ``data.num_classes``).

Classes as Multi-Task-Learning-PyTorch's ``HumanPartsMeter``: background, head, torso, upper
arms, lower arms (+ hands), upper legs, lower legs (+ feet); 255 = unknown. Images without a person
carry no label (``has`` False). Loss: plain cross-entropy (``loss.seg_class_weights`` and label
smoothing belong to ``seg``); metric: :class:`cvmtl.scoring.segmentation.SegMetric` with 7 classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cvmtl.loss_terms import seg_terms, seg_valid
from cvmtl.scoring.segmentation import SegMetric, class_labels, top_class
from cvmtl.tasks.colorize import colorize_seg, default_palette
from cvmtl.tasks.registry import register
from cvmtl.tasks.seg import encode_classes, pixel_accuracy
from cvmtl.tasks.spec import CLASSES, Info, TaskSpec

PARTS_CLASSES = (
    "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs",
)  # fmt: skip
PARTS_PALETTE = default_palette(len(PARTS_CLASSES))


def _loss(pred: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor, cfg: Any):
    return seg_terms(pred, target, labeled)


def encode_parts(pred: np.ndarray, info: Info) -> dict[str, np.ndarray]:
    return encode_classes(pred, info, PARTS_PALETTE)


PARTS = register(
    TaskSpec(
        name="parts",
        title="human parts",
        label=CLASSES,
        channels=len(PARTS_CLASSES),
        loss=_loss,
        loss_weights=lambda target, labeled, cfg: seg_valid(target, labeled).float(),
        metric=lambda num_classes, ev: SegMetric(len(PARTS_CLASSES)),
        metrics={"miou": True, "pixel_acc": True},
        delta_metrics={"miou": True},
        probabilities=lambda logits: logits.float().softmax(dim=1),
        predict=top_class,
        decide=class_labels,
        colorize=lambda labels, info: colorize_seg(labels, PARTS_PALETTE),
        encode=encode_parts,
        summary=pixel_accuracy,
        classes=PARTS_CLASSES,
    )
)
