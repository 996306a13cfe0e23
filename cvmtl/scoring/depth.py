"""Depth metric: pixel means over the whole split of the usual monocular-depth errors."""

from __future__ import annotations

import math

import torch

from cvmtl.scoring._common import (
    accumulate,
    check_shapes,
    count_ones,
    indicator,
    nan_if_empty,
    reduced,
)

# Order of the accumulated sums (one float64 vector, so DDP needs a single all_reduce).
_SUMS = ("abs", "rel", "sq_rel", "sq", "log_sq", "d1", "d2", "d3", "count", "nonfinite")


class DepthMetric:
    """Streaming ``abs_err``, ``rel_err``, ``sq_rel``, ``rmse``, ``log_rmse`` (metres / ratios) and
    ``delta1..3`` (percent of pixels with ``max(p/g, g/p) < 1.25**k``).

    Valid pixels: ``min_depth <= target <= max_depth`` (and target > 0: 0 marks invalid).
    Predictions are clamped to ``[min_depth, max_depth]`` first (to at least 1e-6 m so that the
    log and ratios stay finite when ``min_depth`` is 0; a valid target below 1e-6 m, possible
    only then, is taken as 1e-6 m too). With no valid pixel, values are NaN.

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
        p, g, valid, bad = depth_terms(pred, target, self.min_depth, self.max_depth)
        # Every term is a function of r = p / g (finite and positive on every pixel), multiplied
        # by the valid mask so that invalid pixels add exactly 0. Float masks, not boolean
        # indexing or torch.where: no host sync on CUDA, vectorized on the CPU.
        r = p / g
        rel = (r - 1).abs_().mul_(valid)  # |p - g| / g
        ad = rel * g  # |p - g|
        log_r = r.log_().mul_(valid)
        # max(p/g, g/p) < 1.25**k  <=>  |log r| / log 1.25 < k (the thresholds are evenly
        # spaced in log space). Invalid pixels (log r = 0) pass every test: their number is
        # taken off below; a non-finite prediction is moved past the last threshold.
        steps = log_r.abs().mul_(1.0 / math.log(1.25)).add_(bad, alpha=3.0)
        count = count_ones(valid)
        invalid = valid.numel() - count
        below = [count_ones(indicator(torch.lt, steps, k)) - invalid for k in (1, 2, 3)]
        ad, rel, log_r = ad.flatten(), rel.flatten(), log_r.flatten()
        sums = torch.stack(
            [ad.sum(), rel.sum(), torch.dot(ad, rel), torch.dot(ad, ad), torch.dot(log_r, log_r)]
        )
        counts = torch.stack([*below, count, count_ones(bad)])
        self._sums = accumulate(self._sums, torch.cat([sums.double(), counts]))

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


def depth_terms(
    pred: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(p, g, valid, bad)`` as :class:`DepthMetric` scores them, all float32 on the prediction's
    device, ``valid`` and ``bad`` as 0 / 1 masks (see :func:`indicator`). ``valid``: ``min_depth
    <= g <= max_depth`` and ``g > 0``; ``bad``: a non-finite prediction on a valid pixel. ``p`` is
    the prediction clamped to ``[max(min_depth, 1e-6), max_depth]``, where it is bad the end of
    that range farther from the target; ``g`` is the target clamped to the same range (unchanged
    on valid pixels unless ``min_depth`` < 1e-6; finite on every pixel, so that ``p / g`` is)."""
    lo, hi = max(min_depth, 1e-6), max_depth
    p = pred.float()
    g = target.to(device=p.device, dtype=torch.float32)
    valid = indicator(torch.ge, g, min_depth).mul_(indicator(torch.le, g, max_depth))
    if min_depth <= 0:
        valid.mul_(indicator(torch.gt, g, 0.0))
    finite = indicator(torch.lt, p.abs(), math.inf)  # NaN compares False
    bad = finite.neg_().add_(1.0).mul_(valid)
    g = torch.nan_to_num(g, nan=lo).clamp_(lo, hi)
    # hi below the range's midpoint, lo from it up (sign * 2 hi, clamped: exact)
    far = (0.5 * (lo + hi) - g).sign_().mul_(2 * hi).clamp_(lo, hi)
    # lerp with a weight of exactly 0 or 1 returns the start or the end exactly
    return torch.lerp(torch.nan_to_num(p, nan=lo).clamp_(lo, hi), far, bad), g, valid, bad


def scored_depth(
    pred: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`depth_terms` with ``valid`` and ``bad`` as bool masks, for indexing (reports)."""
    p, g, valid, bad = depth_terms(pred, target, min_depth, max_depth)
    return p, g, valid > 0, bad > 0
