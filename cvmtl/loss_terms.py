"""Per-pixel loss terms of the built-in tasks: leaf functions that know no task registry
(the task specs in :mod:`cvmtl.tasks` compose them; :mod:`cvmtl.losses` reduces them).

Each returns ``(terms, weights)``: the task's loss is ``sum(terms) / sum(weights)`` over the
(global) batch. Invalid pixels have zero terms and zero weights.

Binary maps (edges, saliency): targets are int64 ``[B, H, W]`` with 1 = positive, 0 = negative
and anything else (255) unknown; predictions are 1-channel logits ``[B, 1, H, W]``.

- :func:`weighted_bce_terms` is the edge loss of Multi-Task-Learning-PyTorch
  (``BalancedCrossEntropyLoss(pos_weight=0.95)``) and InvPT (``BalancedBinaryCrossEntropyLoss``):
  ``w * BCE`` on edge pixels, ``(1 - w) * BCE`` on the others, divided by the number of known
  pixels (not by the sum of the weights: MTL-PyTorch divides by the pixel count, InvPT takes the
  mean over the unmasked pixels).
- :func:`bce_terms`: plain BCE, the mean over known pixels. (MTL-PyTorch / InvPT balance the
  saliency loss per batch, HED-style; a weight that depends on the batch is not a per-pixel term
  of the global mean, so cvmtl keeps the plain mean.)
- :func:`depth_normal_terms`: a cross-task consistency term (``loss.consistency.depth_normal``),
  the depth prediction checked against the normal labels; the depth spec names it in its
  ``extras["consistency"]`` and :mod:`cvmtl.losses` adds it to the depth loss (below).
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cvmtl.distributed import all_reduce_sum, is_dist

IGNORE_INDEX = 255
SILOG_LAMBDA = 0.85
BERHU_FRACTION = 0.2
_EPS = 1e-6


def labeled_mask(batch: dict, task: str, n: int, device: torch.device) -> torch.Tensor:
    has = batch.get("has", {}).get(task) if isinstance(batch.get("has"), dict) else None
    if has is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    return torch.as_tensor(has, device=device).bool().view(n)


def seg_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    labeled: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel cross-entropy ``[B,H,W]`` (already times ``w[target]``) and its denominators.

    The denominators are the validity mask, or ``w[target]`` with class weights, so that the sum
    of the terms over the sum of the denominators is ``F.cross_entropy``'s weighted mean.
    """
    valid = seg_valid(target, labeled)
    safe = torch.where(valid, target, torch.zeros_like(target)).long()
    loss = F.cross_entropy(
        logits.float(),
        safe,
        weight=class_weights,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    denom = valid.float() if class_weights is None else class_weights[safe] * valid
    return torch.where(valid, loss, torch.zeros_like(loss)), denom


def seg_valid(target: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    return (target != IGNORE_INDEX) & labeled.view(-1, 1, 1)


def depth_valid(target: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    return (target > 0) & labeled.view(-1, 1, 1, 1)


def normal_valid(target: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    return (target != 0).any(dim=1) & labeled.view(-1, 1, 1)


def depth_terms(
    pred: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor, kind: str = "l1"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel depth loss ``[B,1,H,W]`` (``l1``, ``log_l1``, ``berhu``) and validity mask.

    ``silog`` is not a pixel mean; see :func:`silog_sums`.
    """
    valid = depth_valid(target, labeled)
    pred = pred.float()
    target = target.float()
    if kind == "l1":
        loss = (pred - target).abs()
    elif kind == "log_l1":
        loss = (safe_log(pred, valid) - safe_log(target, valid)).abs()
    elif kind == "berhu":
        diff = (pred - target).abs()
        masked = torch.where(valid, diff.detach(), torch.zeros_like(diff))
        c = masked.amax() if masked.numel() else masked.new_zeros(())
        if is_dist():  # the threshold is a function of the global batch
            dist.all_reduce(c, op=dist.ReduceOp.MAX)
        c = (BERHU_FRACTION * c).clamp_min(_EPS)
        loss = torch.where(diff <= c, diff, (diff * diff + c * c) / (2 * c))
    else:
        raise ValueError(f"unknown depth loss {kind!r} (available: l1, silog, berhu, log_l1)")
    return torch.where(valid, loss, torch.zeros_like(loss)), valid.float()


def safe_log(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # Invalid pixels get log(1) = 0 so that neither the value nor the gradient turns into NaN.
    return torch.where(valid, x, torch.ones_like(x)).clamp_min(_EPS).log()


def normal_terms(
    pred: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor, kind: str = "cosine"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel normal loss ``[B,H,W]`` (``cosine``: 1 - cos, ``l1``) and validity mask."""
    target = target.float()
    valid = normal_valid(target, labeled)
    unit = F.normalize(pred.float(), dim=1, eps=_EPS)
    if kind == "cosine":
        loss = 1.0 - (unit * target).sum(dim=1)
    elif kind == "l1":
        loss = (unit - target).abs().sum(dim=1)
    else:
        raise ValueError(f"unknown normal loss {kind!r} (available: cosine, l1)")
    return torch.where(valid, loss, torch.zeros_like(loss)), valid.float()


def class_weights(cfg, device: torch.device) -> torch.Tensor | None:
    """``loss.seg_class_weights`` as a float32 tensor on ``device`` (None when unset); the same
    tensor on every call with the same values and device. Read-only."""
    weights = cfg.loss.seg_class_weights
    if not weights:
        return None
    if len(weights) != cfg.data.num_classes:
        raise ValueError(
            f"loss.seg_class_weights has {len(weights)} values for {cfg.data.num_classes} classes"
        )
    return _weight_tensor(tuple(float(w) for w in weights), str(torch.device(device)))


@functools.lru_cache(maxsize=8)
def _weight_tensor(values: tuple[float, ...], device: str) -> torch.Tensor:
    # Built once per process and device: the loss reads it twice per step, and a fresh
    # host-to-device copy each time would wait for the CUDA stream.
    return torch.tensor(values, dtype=torch.float32, device=device)


def binary_valid(target: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    """Known pixels ``[B, H, W]``: target 0 or 1, on labeled samples."""
    return ((target == 0) | (target == 1)) & labeled.view(-1, 1, 1)


def _bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"binary loss: want logits [B,1,H,W], got {tuple(logits.shape)}")
    if target.shape != logits[:, 0].shape:
        raise ValueError(
            f"binary loss: target {tuple(target.shape)} does not match logits {tuple(logits.shape)}"
        )
    positive = (target == 1) & valid
    # float32 whatever the autocast dtype: the log-sum-exp of bf16 logits loses the small terms
    return F.binary_cross_entropy_with_logits(
        logits[:, 0].float(), positive.float(), reduction="none"
    )


def bce_terms(
    logits: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel BCE-with-logits ``[B, H, W]`` (0 on unknown pixels) and the validity mask."""
    valid = binary_valid(target, labeled)
    loss = _bce(logits, target, valid)
    return torch.where(valid, loss, torch.zeros_like(loss)), valid.float()


def weighted_bce_terms(
    logits: torch.Tensor, target: torch.Tensor, labeled: torch.Tensor, pos_weight: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel ``pos_weight * BCE`` on positives, ``(1 - pos_weight) * BCE`` on negatives, and
    the validity mask (the loss is the mean of the weighted terms over the known pixels)."""
    if not 0.0 < pos_weight < 1.0:
        raise ValueError(f"weighted BCE: pos_weight must be in (0, 1), got {pos_weight}")
    valid = binary_valid(target, labeled)
    loss = _bce(logits, target, valid)
    weight = torch.where(target == 1, pos_weight, 1.0 - pos_weight)
    return torch.where(valid, weight * loss, torch.zeros_like(loss)), valid.float()


# -- cross-task consistency ------------------------------------------------------------------------
# Depth-normal: on a planar surface with camera-frame normal n at offset d, inverse depth is affine
# in the pixel coordinates, 1/z(u, v) = (n_x (u - c_x) / f_x + n_y (v - c_y) / f_y + n_z) / d, so
# its image gradient is parallel to (n_x / f_x, n_y / f_y): to (n_x, n_y) for square pixels,
# whatever the focal length, the principal point or d. Zoom, crop and flip augmentations keep the
# relation (a flip negates n_x and the x gradient alike): no camera intrinsics are needed. The term
# is 1 - cos between the central-difference gradient of the predicted inverse depth and the
# labeled (n_x, n_y), inside surfaces (the normal label equal to its four neighbours' within ~8
# degrees) tilted enough for (n_x, n_y) to have a direction (|(n_x, n_y)| >= 0.2, ~12 degrees off
# the viewing axis). Which way a format's normal axes point is read from the labels: the sign of
# the agreement between the labeled depth's gradient and the labeled normals over the batch (one
# number; no depth structure enters the term).

MIN_TILT = 0.2  # |(n_x, n_y)| below this: the surface faces the camera, no gradient direction
SAME_SURFACE_COS = 0.99  # neighbours' normals within ~8 degrees: inside one surface


def central_gradient(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, H, W]`` (d/du, d/dv) of ``x`` ``[B, 1, H, W]`` by central differences; zero on
    the one-pixel border."""
    gu = F.pad(x[..., :, 2:] - x[..., :, :-2], (1, 1, 0, 0))
    gv = F.pad(x[..., 2:, :] - x[..., :-2, :], (0, 0, 1, 1))
    return torch.cat([gu, gv], dim=1)


def surface_mask(normal: torch.Tensor, labeled: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` bool: labeled, tilted pixels whose four neighbours lie on the same surface
    (``labeled`` ``[B]`` bool: the samples that have the labels)."""
    unit = F.normalize(normal.float(), dim=1, eps=_EPS)
    valid = normal_valid(normal, labeled)
    inside = valid.clone()
    for dim, step in ((2, 1), (2, -1), (3, 1), (3, -1)):
        neighbour = torch.roll(unit, shifts=step, dims=dim)
        inside &= (unit * neighbour).sum(1) > SAME_SURFACE_COS
        inside &= torch.roll(valid, shifts=step, dims=dim - 1)
    inside[:, [0, -1], :] = False  # roll wraps around: the border has no true neighbours
    inside[:, :, [0, -1]] = False
    return inside & (unit[:, :2].norm(dim=1) >= MIN_TILT)


def normal_axis_sign(depth: torch.Tensor, normal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """+1 or -1 (a 0-dim tensor: no host read): the sign of ``sum(grad(1/z) . (n_x, n_y))`` over
    ``mask`` where both neighbours' depth is labeled (over all ranks under DDP), i.e. which way
    the format's normal axes point relative to the image axes."""
    labeled = (depth > 0).float()
    known = mask & (central_gradient(labeled).abs().sum(1) == 0) & (depth[:, 0] > 0)
    inverse = labeled / depth.float().clamp_min(_EPS)
    agree = (central_gradient(inverse) * normal[:, :2].float()).sum(1)
    # Summed over the ranks: every rank takes the single-process batch's sign.
    total = all_reduce_sum(torch.where(known, agree, torch.zeros_like(agree)).sum())
    return torch.where(total < 0, -1.0, 1.0).to(agree)


def depth_normal_terms(
    depth_pred: torch.Tensor,
    normal_target: torch.Tensor,
    depth_target: torch.Tensor,
    labeled: torch.Tensor,
) -> torch.Tensor:
    """Per-pixel ``1 - cos(grad(1/z_pred), s (n_x, n_y))`` ``[B, 1, H, W]`` (the depth loss's
    shape), zero outside the surface mask and on samples without both labels (``labeled``
    ``[B]`` bool)."""
    mask = surface_mask(normal_target, labeled)
    sign = normal_axis_sign(depth_target, normal_target, mask)
    grad = central_gradient(1.0 / depth_pred.float().clamp_min(_EPS))
    target = sign * normal_target[:, :2].float()
    cos = (grad * target).sum(1) / (grad.norm(dim=1) * target.norm(dim=1) + _EPS)
    return torch.where(mask, 1.0 - cos, torch.zeros_like(cos)).unsqueeze(1)
