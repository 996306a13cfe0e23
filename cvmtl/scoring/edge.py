"""Edge metric: odsF / oisF / AP of boundary precision-recall with a matching tolerance.

A predicted edge pixel and a ground-truth edge pixel match when they are at most ``max_dist``
times the image diagonal apart (0.0075 on PASCAL-Context, 0.011 on NYUD, as SEISM / BSDS). Two
matchers (the results say which: ``exact`` 0 or 1):

- approximate (default, cheap enough for every validation): a predicted pixel is correct when
  some ground-truth edge lies within the tolerance, and a ground-truth pixel is found when some
  predicted pixel at the threshold does; no one-to-one pairing and no thinning, so a thick
  prediction along a true edge is all correct. It runs on the tensors' device without a host
  read: one max-pool per disk row for all thresholds at once.
- exact (``exact=True``; eval config attribute ``edge_exact``): the BSDS protocol of
  :mod:`cvmtl.scoring.edge_match`: predictions thinned at each threshold, then matched one to one.
  It runs on the CPU per image and threshold: for final evaluation.

Counts per threshold are summed over the split for odsF (the F of the summed counts, maximised
over thresholds with BSDS's linear interpolation between neighbouring thresholds); oisF sums
each image's counts at that image's best threshold; ``ap`` is BSDS / pyedgeeval's interpolated
average precision. Thresholds: 0.01, ..., 0.99 (99, as Multi-Task-Learning-PyTorch's SEISM run).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cvmtl.scoring._common import accumulate, count_bins, reduced
from cvmtl.scoring.edge_match import exact_counts
from cvmtl.scoring.saliency import (
    binary_targets,
    count_at_thresholds,
    even_thresholds,
    threshold_bins,
)

THRESHOLDS = 99


def disk_max(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Max of ``x`` [B,H,W] over a disk of ``radius`` pixels (Euclidean, border padded with
    -inf): the union of one centred rectangle per row offset, each an exact max-pool."""
    out = x.unsqueeze(1)
    res = out
    for dy in range(int(math.floor(radius)) + 1):
        dx = int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)) + 1e-9))
        if dy == 0 and dx == 0:
            continue
        # a rectangle's max is separable: a column pass, then a row pass
        pooled = F.max_pool2d(out, (2 * dy + 1, 1), stride=1, padding=(dy, 0)) if dy else out
        if dx:
            pooled = F.max_pool2d(pooled, (1, 2 * dx + 1), stride=1, padding=(0, dx))
        res = torch.maximum(res, pooled)
    return res[:, 0]


def approx_counts(
    bins: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    bad: torch.Tensor,
    radius: float,
    num_thresholds: int,
) -> torch.Tensor:
    """``[B, 4, T]`` (found GT, GT, correct predictions, predictions) per image and threshold;
    ``bins`` [B,H,W] as :func:`threshold_bins`, masks [B,H,W] bool. A non-finite prediction
    (``bad``) is a wrong positive at every threshold."""
    b, t = bins.shape[0], num_thresholds
    scored = valid & ~bad
    near_gt = disk_max(gt.float(), radius) > 0
    # the highest bin a scored prediction reaches within the tolerance of each pixel
    reach = disk_max(torch.where(scored, bins, -1).float(), radius).clamp_min(0).long()
    # one count per quantity: bin [image, bins]; pixels that do not count go to a dropped entry
    rows = torch.arange(b, device=bins.device).view(-1, 1, 1) * (t + 1)
    dump = b * (t + 1)
    parts = [
        torch.where(gt & valid, rows + reach, dump),
        torch.where(scored & near_gt, rows + bins, dump),
        torch.where(valid, rows + torch.where(bad, t, bins), dump),
    ]
    counts = [count_bins(p, dump + 1)[:-1].view(b, t + 1).double() for p in parts]
    found, correct, predicted = (count_at_thresholds(c, t) for c in counts)
    total_gt = (gt & valid).sum(dim=(1, 2)).double().view(-1, 1).expand(-1, t)
    return torch.stack([found, total_gt, correct, predicted], dim=1)


def f_score(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return torch.where(p + r > 0, 2 * p * r / (p + r).clamp_min(1e-300), 0.0)


def rates(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(recall, precision) of counts [..., 4, T] (0 where nothing was counted, as BSDS)."""
    recall = counts[..., 0, :] / counts[..., 1, :].clamp_min(1)
    precision = counts[..., 2, :] / counts[..., 3, :].clamp_min(1)
    return recall, precision


def best_interpolated_f(recall: np.ndarray, precision: np.ndarray) -> float:
    """BSDS's odsF: the best F along straight segments between neighbouring thresholds' (R, P)
    (101 points per segment, as pyedgeeval's ``interpolated_max_scores``)."""
    d = np.linspace(0.0, 1.0, 101).reshape(-1, 1)
    r = np.concatenate([recall[:1], (recall[1:] * d + recall[:-1] * (1 - d)).ravel()])
    p = np.concatenate([precision[:1], (precision[1:] * d + precision[:-1] * (1 - d)).ravel()])
    return float(np.max(np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)))


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """pyedgeeval's AP: the best precision at recall >= r, for r = 0, 0.01, ..., 0.99, / 101."""
    levels = np.arange(0.0, 1.0, 0.01)
    best = [np.max(precision[recall >= r], initial=0.0) for r in levels]
    return float(np.sum(best) / 101)


class EdgeMetric:
    """Streaming ``odsf``, ``oisf``, ``ap`` (percent) of 1-channel edge logits against thin
    binary targets (1 = edge, 0 = not, 255 = unknown: not scored, neither as a prediction nor
    as ground truth). ``exact`` (0 / 1) says which matcher counted; ``nonfinite`` counts
    non-finite logits on scored pixels (a wrong edge at every threshold). An image without a
    scored pixel does not count. ``compute()`` all-reduces.
    """

    def __init__(
        self,
        max_dist: float = 0.0075,
        exact: bool = False,
        num_thresholds: int = THRESHOLDS,
        thin: bool = True,
    ) -> None:
        if max_dist < 0 or num_thresholds < 1:
            raise ValueError(f"EdgeMetric: bad max_dist {max_dist} / thresholds {num_thresholds}")
        self.max_dist = float(max_dist)
        self.exact = bool(exact)
        self.thin = bool(thin)
        self.thresholds = even_thresholds(num_thresholds)
        self.reset()

    def reset(self) -> None:
        # [4, T] split counts, the 4 counts at each image's best threshold, images, nonfinite
        self._sums = torch.zeros(4 * len(self.thresholds) + 6, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred: logits [B,1,H,W]; target: [B,H,W] (or [B,1,H,W]) 1 = edge, 0, 255 = unknown."""
        target = binary_targets(pred, target, "EdgeMetric")
        t = len(self.thresholds)
        valid = (target == 0) | (target == 1)
        gt = target == 1
        radius = self.max_dist * math.hypot(*target.shape[-2:])
        bins, bad = threshold_bins(pred, self.thresholds)
        if self.exact:
            per = self._exact(pred, gt, valid, bad, radius)
        else:
            per = approx_counts(bins, gt, valid, bad, radius, t)
        scored = valid.flatten(1).any(dim=1).to(per.device)
        per = per * scored.view(-1, 1, 1)
        recall, precision = rates(per)
        best = f_score(precision, recall).argmax(dim=1)  # the first best, as pyedgeeval
        at_best = per.gather(2, best.view(-1, 1, 1).expand(-1, 4, 1))[..., 0]  # [B, 4]
        extra = torch.stack([scored.sum(), (bad & valid).sum().to(per.device)]).double()
        update = torch.cat([per.sum(0).flatten(), at_best.sum(0), extra])
        self._sums = accumulate(self._sums, update)

    def _exact(
        self,
        pred: torch.Tensor,
        gt: torch.Tensor,
        valid: torch.Tensor,
        bad: torch.Tensor,
        radius: float,
    ) -> torch.Tensor:
        prob = torch.sigmoid(pred[:, 0].float()).masked_fill(bad, math.nan).cpu().numpy()
        gt_np, valid_np = gt.cpu().numpy(), valid.cpu().numpy()
        thresholds = self.thresholds.numpy()
        per = [
            exact_counts(prob[i], gt_np[i], valid_np[i], thresholds, radius, self.thin)
            for i in range(prob.shape[0])
        ]
        return torch.from_numpy(np.stack(per))

    def compute(self) -> dict[str, float]:
        t = len(self.thresholds)
        s = reduced(self._sums).cpu()
        images, nonfinite = s[-2].item(), s[-1].item()
        out = {"exact": float(self.exact), "nonfinite": float(nonfinite)}
        if images <= 0:
            return {"odsf": math.nan, "oisf": math.nan, "ap": math.nan, **out}
        recall, precision = (x.numpy() for x in rates(s[: 4 * t].view(4, t)))
        ois_r, ois_p = rates(s[4 * t : 4 * t + 4].view(4, 1))
        return {
            "odsf": 100.0 * best_interpolated_f(recall, precision),
            "oisf": 100.0 * f_score(ois_p, ois_r).item(),
            "ap": 100.0 * average_precision(recall, precision),
            **out,
        }
