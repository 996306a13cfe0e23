"""Predictions over test-time views (flip TTA ``eval.tta``, several ``eval.scales``) at the
targets' size, in the model's output space, read from each task's :class:`cvmtl.tasks.TaskSpec`.

A view's prediction is resized to the targets' size, multiplied by ``zoom ** -scale_power``
(a model sees depth / s in an image resized by s), un-mirrored with ``label.flip_sign`` and, for
``unit_vector`` labels, renormalized. Several views average ``spec.probabilities`` (softmax for
classes, sigmoid for binary maps) and map the mean back to the output space, so that metrics and
``spec.predict`` always see what the model would output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.tasks import get_task

Tensor = torch.Tensor

__all__ = ["decide", "predict"]


def predict(
    model: nn.Module,
    image: torch.Tensor,
    size: tuple[int, int] | torch.Size,
    tasks: list[str],
    cfg: Any,
    num_classes: int | None = None,
    first: bool = False,
) -> dict[str, torch.Tensor]:
    """Predictions at ``size`` in the model's output space, [B, C, H, W] per task (class logits,
    depth in metres, unit normals, binary logits ...), what the metrics and ``spec.predict``
    take. The model is called once per scale and flip (``eval.scales``, ``eval.tta``); with
    several views each view's ``spec.probabilities`` are averaged (softmax for classes, not
    logits) and mapped back to the output space (:func:`_inverse`). The first call of the first
    batch checks the outputs' tasks and class counts."""
    scales = list(getattr(cfg.eval, "scales", [1.0]) or [1.0])
    flips = [False, True] if cfg.eval.tta else [False]
    views = len(scales) * len(flips)
    specs = {task: get_task(task) for task in tasks}
    # a resolved config (cvmtl.precision.resolve_precision): only a concrete True converts
    channels_last = getattr(cfg.train, "channels_last", False) is True
    acc: dict[str, torch.Tensor] = {}
    for s in scales:
        x = image
        if s != 1.0:
            hw = (max(1, round(image.shape[-2] * s)), max(1, round(image.shape[-1] * s)))
            x = F.interpolate(image, size=hw, mode="bilinear", align_corners=False)
        # A zoom by z multiplies a label by z ** scale_power (sample contract): the prediction on
        # x is in units of an image resized by z = (x size / target size).
        zoom = math.sqrt(x.shape[-2] / size[0] * x.shape[-1] / size[1])
        for flip in flips:
            xi = x.flip(-1) if flip else x
            if channels_last:
                xi = xi.contiguous(memory_format=torch.channels_last)
            out = model(xi)
            if first and s == scales[0] and not flip:
                _check_outputs(out, tasks, num_classes)
            for task, spec in specs.items():
                p = _view(spec, out[task], size, zoom, flip, views)
                acc[task] = p if task not in acc else acc[task] + p
    if views > 1:
        for task, spec in specs.items():
            mean = acc[task] / views
            if spec.label.unit_vector:
                mean = F.normalize(mean, dim=1)
            acc[task] = _inverse(spec, mean.shape[1])(mean)
    return acc


def decide(preds: dict[str, Tensor]) -> dict[str, Tensor]:
    """What each task's metric scores (``spec.decide``: labels for class tasks, the output itself
    for the others): the last part of predicting in evaluation, so metrics only count."""
    return {task: get_task(task).decide(p) for task, p in preds.items()}


def _view(spec: Any, p: torch.Tensor, size: Any, zoom: float, flip: bool, views: int) -> Tensor:
    """One view's prediction at ``size`` in the target's units and orientation (probabilities
    when ``views > 1``). A single view already at the target size stays in the model's dtype: the
    metrics cast what they need, and a float32 copy of the seg logits costs as much as the
    metric itself."""
    label = spec.label
    resized = tuple(p.shape[-2:]) != tuple(size)
    if resized:
        p = F.interpolate(p.float(), size=tuple(size), mode="bilinear", align_corners=False)
    if label.scale_power != 0 and zoom != 1.0:
        p = p.float() * zoom ** (-label.scale_power)
    if flip:
        p = p.flip(-1)
        if label.flip_sign is not None:  # mirrored scene, e.g. the x component of a normal
            p = p * p.new_tensor(label.flip_sign).view(1, -1, 1, 1)
    if label.unit_vector and (resized or views > 1):
        p = F.normalize(p.float(), dim=1)
    if views > 1:
        p = spec.probabilities(p.float())  # average probabilities, not logits
    return p


def _inverse(spec: Any, channels: int) -> Callable[[Tensor], Tensor]:
    """The map from averaged probabilities back to the output space: ``spec.extras
    ["from_probabilities"]``, else the first of identity (regression, unit vectors), log
    (softmax) and logit (sigmoid) under which ``spec.probabilities`` gives its input back."""
    if "from_probabilities" in spec.extras:
        return spec.extras["from_probabilities"]
    x = 3.0 * torch.randn(2, channels, 3, 3, generator=torch.Generator().manual_seed(0))
    q = spec.probabilities(x).float()
    for inverse in _INVERSES:
        back = spec.probabilities(inverse(q)).float()
        if back.shape == q.shape and torch.allclose(back, q, rtol=1e-4, atol=1e-5):
            return inverse
    raise ValueError(
        f"evaluate: task {spec.name!r}: cannot average test-time views (its probabilities have "
        "no identity / log / logit inverse); set spec.extras['from_probabilities']"
    )


_TINY = torch.finfo(torch.float32).tiny  # keeps log(0) finite: a 0 never wins an argmax
_INVERSES: tuple[Callable[[Tensor], Tensor], ...] = (
    lambda q: q,
    lambda q: q.clamp_min(_TINY).log(),
    lambda q: q.logit(eps=1e-7),
)


def _check_outputs(out: Any, tasks: list[str], num_classes: int | None) -> None:
    if not isinstance(out, dict):
        raise ValueError(
            f"evaluate: the model must return a dict {{task: tensor}}, got {type(out)}"
        )
    missing = [t for t in tasks if t not in out]
    if missing:
        raise ValueError(
            f"evaluate: the model predicts {sorted(out)} but evaluation asks for {tasks} "
            f"(missing {missing})"
        )
    for task in tasks:  # tasks over the dataset's classes must predict as many
        got = out[task].shape[1]
        if get_task(task).channels is None and num_classes is not None and got != num_classes:
            raise ValueError(
                f"evaluate: {task}: the model predicts {got} classes but the dataset has "
                f"{num_classes} (data.num_classes)"
            )
