"""Depth metric: pixel means over the whole split of the usual monocular-depth errors."""

from __future__ import annotations

import math

import torch

from cvmtl.metrics._common import accumulate, check_shapes, nan_if_empty, reduced

# Order of the accumulated sums (one float64 vector, so DDP needs a single all_reduce).
_SUMS = ("abs", "rel", "sq_rel", "sq", "log_sq", "d1", "d2", "d3", "count", "nonfinite")


class DepthMetric:
    """Streaming ``abs_err``, ``rel_err``, ``sq_rel``, ``rmse``, ``log_rmse`` (metres / ratios) and
    ``delta1..3`` (percent of pixels with ``max(p/g, g/p) < 1.25**k``).

    Valid pixels: ``min_depth <= target <= max_depth`` (and target > 0: 0 marks invalid).
    Predictions are clamped to ``[min_depth, max_depth]`` first (to at least 1e-6 m so that the
    log and ratios stay finite when ``min_depth`` is 0). With no valid pixel, values are NaN.

    A non-finite prediction (NaN, +-inf) on a valid pixel is the worst the clamp allows, never a
    free pass: it is scored as the end of the clamped range farther from the target in metres
    (``max_depth`` if the target is below the range's midpoint, else the lower end) in every
    error, and it fails every delta threshold. ``nonfinite`` counts those pixels (a float).
    """

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0) -> None:
        if not 0 <= min_depth < max_depth:
            raise ValueError(
                f"DepthMetric: want 0 <= min_depth < max_depth, got {min_depth}, {max_depth}"
            )
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(len(_SUMS), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred [B,1,H,W] metres (any float dtype); target [B,1,H,W] metres, 0 = invalid."""
        check_shapes("DepthMetric", pred, target, 1)
        p, g, valid, bad = scored_depth(pred, target, self.min_depth, self.max_depth)
        # Everything below is a function of r = p / g, set to 1 on invalid pixels so that they
        # add exactly 0 (even a NaN prediction there). Masks, not boolean indexing: no host sync
        # on CUDA; few full-size passes, since this runs on every eval batch.
        g = torch.where(valid, g, 1.0)
        r = torch.where(valid, p / g, 1.0)
        rel = (r - 1).abs_()  # |p - g| / g
        ad = rel * g  # |p - g|
        log_r = r.log_()
        # max(p/g, g/p) < 1.25**k  <=>  |log r| / log 1.25 < k (the thresholds are evenly
        # spaced in log space). Invalid pixels (r = 1) pass every test: their number is taken
        # off below. All counts and sums go into one vector: one conversion, one accumulate.
        ad, rel, log_r = ad.flatten(), rel.flatten(), log_r.flatten()
        steps = log_r.abs().mul_(1.0 / math.log(1.25)).masked_fill_(bad.flatten(), math.inf)
        count = valid.sum()
        invalid = valid.numel() - count
        sums = torch.stack(
            [ad.sum(), rel.sum(), torch.dot(ad, rel), torch.dot(ad, ad), torch.dot(log_r, log_r)]
        )
        counts = [(steps < k).sum() - invalid for k in (1, 2, 3)] + [count, bad.sum()]
        counts = torch.stack(counts)
        self._sums = accumulate(self._sums, torch.cat([sums.double(), counts.double()]))

    def compute(self) -> dict[str, float]:
        s = dict(zip(_SUMS, reduced(self._sums).cpu().tolist()))
        n = s["count"]
        rmse = nan_if_empty(s["sq"], n)
        log_rmse = nan_if_empty(s["log_sq"], n)
        return {
            "abs_err": nan_if_empty(s["abs"], n),
            "rel_err": nan_if_empty(s["rel"], n),
            "sq_rel": nan_if_empty(s["sq_rel"], n),
            "rmse": math.sqrt(rmse) if n > 0 else rmse,
            "log_rmse": math.sqrt(log_rmse) if n > 0 else log_rmse,
            "delta1": nan_if_empty(s["d1"], n, 100.0),
            "delta2": nan_if_empty(s["d2"], n, 100.0),
            "delta3": nan_if_empty(s["d3"], n, 100.0),
            "nonfinite": float(s["nonfinite"]),
        }


def scored_depth(
    pred: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p, g, valid, bad)`` as :class:`DepthMetric` scores them, all float32 / bool on the
    prediction's device: ``p`` is the prediction clamped to ``[max(min_depth, 1e-6),
    max_depth]``, with a non-finite one (``bad``, on valid pixels) replaced by the end of that
    range farther from the target; ``valid``: ``min_depth <= g <= max_depth`` and ``g > 0``."""
    lo, hi = max(min_depth, 1e-6), max_depth
    p = pred.float()
    g = target.to(device=p.device, dtype=torch.float32)
    valid = (g >= min_depth) & (g <= max_depth)
    if min_depth <= 0:
        valid &= g > 0
    bad = valid & ~(p.abs() < math.inf)  # non-finite (NaN compares False; faster than isfinite)
    # hi below the range's midpoint, lo from it up (sign * 2 hi, clamped: exact, and ~15x
    # faster on the CPU than a torch.where with scalars)
    far = (0.5 * (lo + hi) - g).sign_().mul_(2 * hi).clamp_(lo, hi)
    return torch.where(bad, far, p.clamp(lo, hi)), g, valid, bad
