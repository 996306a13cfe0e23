"""Helpers shared by the binary-map tasks (``edge``, ``saliency``): 1-channel logits out,
probabilities shown and written as grey maps.

``extras["from_probabilities"]`` maps probabilities (what test-time views average) back to logits,
the model-output space that ``loss``, ``metric`` and ``predict`` take.
"""

from __future__ import annotations

import numpy as np
import torch

from cvmtl.loss_terms import binary_valid
from cvmtl.tasks.spec import Info, TaskSpec

_EPS = 1e-6


def sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities [B, 1, H, W] of logits (float32)."""
    return torch.sigmoid(logits.float())


def probability_map(logits: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] logits -> [B, H, W] probabilities."""
    return torch.sigmoid(logits.float())[:, 0]


def from_probabilities(prob: torch.Tensor) -> torch.Tensor:
    """Logits of (averaged) probabilities, clamped to [1e-6, 1 - 1e-6] so that they stay finite."""
    return torch.logit(prob.float(), eps=_EPS)


def _hw(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"binary map: expected HxW, got shape {x.shape}")
    return x


def grey_level(x: np.ndarray) -> np.ndarray:
    """uint8 HxW: a probability map as ``p * 255``; a label map (integers) as 255 on 1 and 0
    elsewhere (unknown 255 is black like every invalid pixel)."""
    x = _hw(x)
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        return np.where(x == 1, 255, 0).astype(np.uint8)
    p = np.nan_to_num(x.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def colorize_grey(x: np.ndarray, info: Info | None = None) -> np.ndarray:
    """RGB uint8 HxWx3 grey map of :func:`grey_level`."""
    return np.repeat(grey_level(x)[..., None], 3, axis=2)


def encode_probability(pred: np.ndarray, info: Info | None = None) -> dict[str, np.ndarray]:
    """The written file: one uint8 PNG of ``probability * 255`` (as MTL-PyTorch saves edges and
    saliency for SEISM / its evaluators); no colour file, the map is already grey."""
    return {"": grey_level(pred)}


def positives_at_half(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prediction >= 0.5, target == 1) on the known pixels, as flat bool arrays."""
    p, t = _hw(pred), _hw(target)
    known = (t == 0) | (t == 1)
    return (p >= 0.5)[known], (t == 1)[known]


def binary_task(**fields) -> TaskSpec:
    """A TaskSpec of a binary map: one logit per pixel, loss over the known pixels, sigmoid
    probabilities averaged over views, grey maps shown and written; ``fields`` add the rest
    (name, title, label, loss, metric, metrics, delta_metrics, summary)."""
    return TaskSpec(
        channels=1,
        loss_weights=lambda target, labeled, cfg: binary_valid(target, labeled).float(),
        probabilities=sigmoid,
        predict=probability_map,
        colorize=colorize_grey,
        encode=encode_probability,
        extras={"from_probabilities": from_probabilities},
        **fields,
    )
