"""What a task is: :class:`LabelKind` (how its label is stored, padded, augmented and collated)
and :class:`TaskSpec` (everything else that varies per task: head output, loss, metric, delta_m
set, predictions, colours, files). Every other module asks a spec and never names a task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Info = dict[str, Any]  # what a task needs to know of its run: palette, classes, max_depth, ...


@dataclass(frozen=True)
class LabelKind:
    """How a label is stored, padded and augmented.

    ``channels`` 0: class ids HxW (int64, also binary maps with 255 = unknown); 1: one float per
    pixel (HxW, a tensor [1, H, W]); 3: a vector per pixel (HxWx3, a tensor [3, H, W]).
    Geometry always resamples labels nearest; a zoom by ``s`` multiplies values by
    ``s ** scale_power`` (depth -1: things look closer; disparity +1); a horizontal flip multiplies
    the channels by ``flip_sign``; ``unit_vector`` labels are renormalized after warping;
    ``thin`` binary maps (edges) are thinned back to one pixel after a zoom.
    """

    name: str
    channels: int
    fill: float  # missing label and padding; also the value that is never scored
    scale_power: float = 0.0
    flip_sign: tuple[float, ...] | None = None
    unit_vector: bool = False
    thin: bool = False

    @property
    def integer(self) -> bool:
        return self.channels == 0

    def empty(self, h: int, w: int) -> np.ndarray:
        """A missing label of an HxW image (every pixel ``fill``)."""
        if self.integer:
            return np.full((h, w), int(self.fill), np.int64)
        shape = (h, w) if self.channels == 1 else (h, w, self.channels)
        return np.full(shape, self.fill, np.float32)

    def to_tensor(self, label: np.ndarray) -> torch.Tensor:
        """Raw HxW / HxWxC label -> int64 [H, W] or float32 [C, H, W]."""
        if self.integer:
            return torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))
        array = np.asarray(label, np.float32)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))


CLASSES = LabelKind("classes", 0, 255)
BINARY = LabelKind("binary", 0, 255)  # 0 / 1, 255 = unknown
THIN_BINARY = LabelKind("thin_binary", 0, 255, thin=True)
DEPTH = LabelKind("depth", 1, 0.0, scale_power=-1.0)
DISPARITY = LabelKind("disparity", 1, 0.0, scale_power=1.0)
NORMAL = LabelKind("normal", 3, 0.0, flip_sign=(-1.0, 1.0, 1.0), unit_vector=True)

# loss(pred, target, labeled [B] bool, cfg) -> (per-pixel terms, per-pixel weights); the task's
# loss is sum(terms) / sum(weights) over the (global) batch.
Tensor = torch.Tensor
LossFn = Callable[[Tensor, Tensor, Tensor, Any], tuple[Tensor, Tensor]]


def _identity(x: torch.Tensor, model_cfg: Any = None) -> torch.Tensor:
    return x


@dataclass(frozen=True)
class TaskSpec:
    """A dense prediction task, defined once.

    - head: ``channels`` outputs (``None``: the dataset's class count); ``activate(x, model_cfg)``
      maps the raw float32 output to the model's output (logits stay logits); ``fp32_head`` runs
      the prediction layer in float32 under autocast (regression heads).
    - ``loss`` / ``loss_weights`` (the denominator from the target alone, for accumulation).
    - ``metric(num_classes, eval_cfg)`` a streaming metric; ``metrics`` the direction of every
      metric it reports (True = higher is better); ``delta_metrics`` the ones that count in
      delta_m (a subset, with their directions).
    - ``probabilities`` maps the model output to what is averaged over test-time views (softmax
      for classes, sigmoid for binary maps); ``predict`` maps it to the per-image prediction that
      is shown and written (class ids, probabilities, metres, unit vectors), as [B, ...];
      ``decide`` maps it to what the task's metric scores, in evaluation's prediction step
      (class tasks: labels, so that the argmax is paid once, by predicting, and the metric only
      counts; the default passes the output through).
    - ``colorize(prediction or target [H, W] / [H, W, 3], info) -> RGB uint8``; ``encode(prediction,
      info) -> {suffix: array}``: the files infer / export write, ``{stem}_{name}{suffix}.png``.
    - ``extras``, optional keys the generic code reads: ``from_probabilities`` (averaged view
      probabilities -> the model's output space; by default the inverse of ``probabilities`` is
      found by probing: identity, log or logit), ``silog(cfg) -> bool`` (the loss is the
      scale-invariant log loss: global moments, not a pixel mean), ``palette`` (colours of a task
      with its own ``classes``), ``unit`` (for panels, e.g. ``"m"``), ``floor`` (the demo's trivial
      predictor for this task), ``consistency`` (``{name: (other task, terms(pred, other's
      target, own target, labeled))}``: cross-task terms added to this task's per-pixel loss
      with weight ``loss.consistency[name]`` when both tasks are trained).
    """

    name: str
    label: LabelKind
    channels: int | None
    loss: LossFn
    loss_weights: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]
    metric: Callable[[int, Any], Any]
    metrics: dict[str, bool]
    delta_metrics: dict[str, bool]
    colorize: Callable[[np.ndarray, Info], np.ndarray]
    encode: Callable[[np.ndarray, Info], dict[str, np.ndarray]]
    title: str = ""
    activate: Callable[[torch.Tensor, Any], torch.Tensor] = _identity
    fp32_head: bool = False
    probabilities: Callable[[torch.Tensor], torch.Tensor] = _identity
    predict: Callable[[torch.Tensor], torch.Tensor] = _identity
    decide: Callable[[torch.Tensor], torch.Tensor] = _identity
    summary: Callable[[np.ndarray, np.ndarray], str | None] | None = None
    classes: tuple[str, ...] | None = None  # class names of a task with its own classes
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def ignore_value(self) -> float:
        return self.label.fill

    def out_channels(self, num_classes: int) -> int:
        return num_classes if self.channels is None else self.channels
