"""Saliency metric: max F-beta over thresholds and the best mean IoU (PASCAL-Context protocol)."""

from __future__ import annotations

import math

import torch

from cvmtl.scoring._common import accumulate, count_bins, reduced

BETA_SQ = 0.3  # F-beta of salient-object detection (Achanta et al.; InvPT's SaliencyMeter)
THRESHOLDS = 19  # 0.05, 0.10, ..., 0.95 as InvPT's SaliencyMeter(threshold_step=0.05)


def binary_targets(pred: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
    """``target`` as int64 [B,H,W] on pred's device, checked against logits ``pred`` [B,1,H,W]."""
    if pred.dim() != 4 or pred.shape[1] != 1:
        raise ValueError(f"{name}.update: pred must be logits [B,1,H,W], got {tuple(pred.shape)}")
    if target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != pred[:, 0].shape:
        raise ValueError(
            f"{name}.update: target must be [B,H,W] {tuple(pred[:, 0].shape)}, got "
            f"{tuple(target.shape)} (resize predictions to the target's size first)"
        )
    return target.to(device=pred.device, dtype=torch.int64)


def even_thresholds(num: int) -> torch.Tensor:
    """``num`` probability thresholds k / (num + 1), k = 1..num (float32, computed in float64)."""
    return (torch.arange(1, num + 1, dtype=torch.float64) * (1.0 / (num + 1))).float()


def threshold_bins(
    pred: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bins, bad)`` [B,H,W] of logits [B,1,H,W]: ``bins`` = how many thresholds the sigmoid
    probability reaches (a pixel is positive at threshold j iff ``bins > j``); ``bad``: the logit
    is not finite (NaN, +-inf)."""
    logits = pred[:, 0].float()
    bad = ~(logits.abs() < math.inf)
    prob = torch.sigmoid(logits)
    return torch.bucketize(prob, thresholds.to(prob.device), right=True), bad


def count_at_thresholds(bins: torch.Tensor, num_thresholds: int) -> torch.Tensor:
    """Counts ``[..., T + 1]`` of bins -> counts ``[..., T]`` of pixels positive at each
    threshold (a suffix sum: positive at j iff bin >= j + 1)."""
    return bins.flip(-1).cumsum(-1).flip(-1)[..., 1 : num_thresholds + 1]


class SaliencyMetric:
    """Streaming ``maxf`` and ``miou`` of a binary map, from 1-channel logits.

    - ``maxf``: the F-beta (beta^2 = 0.3) of the pixel counts of the whole split at each
      probability threshold (0.05, ..., 0.95), maximised over thresholds (InvPT's
      ``SaliencyMeter``; a threshold without a positive prediction scores 0).
    - ``miou``: the foreground IoU of each image at each threshold, averaged over images, maximised
      over the same thresholds (Multi-Task-Learning-PyTorch's ``SaliencyMeter``; an image with
      neither a salient pixel nor a positive prediction has IoU 1).

    Target pixels other than 0 / 1 (255 = unknown) are not scored; an image without a scored pixel
    does not count. A non-finite logit on a scored pixel is wrong at every threshold (positive on
    background, negative on the object); ``nonfinite`` counts them. ``compute()`` all-reduces.
    """

    def __init__(self, num_thresholds: int = THRESHOLDS, beta_sq: float = BETA_SQ) -> None:
        if num_thresholds < 1 or beta_sq <= 0:
            raise ValueError(f"SaliencyMetric: bad thresholds {num_thresholds} / beta^2 {beta_sq}")
        self.beta_sq = float(beta_sq)
        self.thresholds = even_thresholds(num_thresholds)
        self.reset()

    def reset(self) -> None:
        t = len(self.thresholds)
        # tp[T], predicted positives[T], IoU sums[T], actual positives, images, nonfinite
        self._sums = torch.zeros(3 * t + 3, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: logits [B,1,H,W]; target: [B,H,W] (or [B,1,H,W]) 0 / 1, 255 = unknown."""
        target = binary_targets(pred, target, "SaliencyMetric")
        t = len(self.thresholds)
        bins, bad = threshold_bins(pred, self.thresholds)
        valid = (target == 0) | (target == 1)
        pos = target == 1
        # a non-finite logit: below every threshold on the object, above every one elsewhere
        bins = torch.where(bad, torch.where(pos, 0, t), bins)
        b = bins.shape[0]
        # one count: bin [image, positive, bins]; unknown pixels go to a last, dropped entry
        index = (torch.arange(b, device=bins.device).view(-1, 1, 1) * 2 + pos) * (t + 1) + bins
        index = torch.where(valid, index, b * 2 * (t + 1))
        counts = count_bins(index, b * 2 * (t + 1) + 1)[:-1].view(b, 2, t + 1).double()
        above = count_at_thresholds(counts, t)  # [B, 2, T]
        tp, pp = above[:, 1], above.sum(dim=1)
        actual = counts[:, 1].sum(dim=-1, keepdim=True)  # [B, 1]
        union = pp + actual - tp
        iou = torch.where(union > 0, tp / union.clamp_min(1), 1.0)
        scored = counts.sum(dim=(1, 2)) > 0  # images with a known pixel
        iou = torch.where(scored.view(-1, 1), iou, 0.0)
        extra = torch.stack([actual.sum(), scored.sum().double(), (bad & valid).sum().double()])
        update = torch.cat([tp.sum(0), pp.sum(0), iou.sum(0), extra])
        self._sums = accumulate(self._sums, update)

    def compute(self) -> dict[str, float]:
        t = len(self.thresholds)
        s = reduced(self._sums).cpu()
        tp, pp, iou = s[:t], s[t : 2 * t], s[2 * t : 3 * t]
        actual, images, nonfinite = s[3 * t].item(), s[3 * t + 1].item(), s[3 * t + 2].item()
        if images <= 0:
            nan = float("nan")
            return {"maxf": nan, "miou": nan, "nonfinite": float(nonfinite)}
        precision = tp / pp.clamp_min(1)
        recall = tp / max(actual, 1.0)
        denom = self.beta_sq * precision + recall
        f = torch.where(denom > 0, (1 + self.beta_sq) * precision * recall / denom, 0.0)
        return {
            "maxf": 100.0 * f.max().item(),
            "miou": 100.0 * (iou / images).max().item(),
            "nonfinite": float(nonfinite),
        }
