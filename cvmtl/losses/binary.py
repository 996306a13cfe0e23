"""Per-pixel loss terms of binary maps (edges, saliency): leaf functions, no task registry.

Targets are int64 ``[B, H, W]`` with 1 = positive, 0 = negative and anything else (255) unknown;
predictions are 1-channel logits ``[B, 1, H, W]``. Each function returns ``(terms, weights)``
with ``loss = sum(terms) / sum(weights)`` over the (global) batch, as :mod:`cvmtl.losses.terms`.

- :func:`weighted_bce_terms` is the edge loss of Multi-Task-Learning-PyTorch
  (``BalancedCrossEntropyLoss(pos_weight=0.95)``) and InvPT (``BalancedBinaryCrossEntropyLoss``):
  ``w * BCE`` on edge pixels, ``(1 - w) * BCE`` on the others, divided by the number of known
  pixels (not by the sum of the weights: MTL-PyTorch divides by the pixel count, InvPT takes the
  mean over the unmasked pixels).
- :func:`bce_terms`: plain BCE, the mean over known pixels. (MTL-PyTorch / InvPT balance the
  saliency loss per batch, HED-style; a weight that depends on the batch is not a per-pixel term
  of the global mean, so cvmtl keeps the plain mean.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
