"""Surface-normal metric: angular error statistics, with a median from a fine histogram."""

from __future__ import annotations

import math

import torch

from cvmtl.scoring._common import (
    accumulate,
    check_shapes,
    count_bins,
    count_ones,
    indicator,
    nan_if_empty,
    reduced,
)

# 0.005-degree bins over [0, 180]: the median found by interpolating inside its bin is within one
# bin width (0.005 deg) of the exact one, in 36000 counters whatever the dataset size. The
# 11.25 / 22.5 / 30 degree thresholds fall on bin edges, so those rates come from it too.
BIN_DEG = 0.005
NUM_BINS = 36000
_SUMS = ("angle", "angle_sq", "nonfinite")
WORST_DEG = 180.0  # the angle charged for a prediction with no direction (see NormalMetric)


def angle_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Angle in degrees [B,H,W] between [B,3,H,W] vector fields, in float32.

    atan2(|p x g|, p . g) needs no normalization (both terms scale with |p| |g|) and, unlike
    acos(p . g), keeps full precision at small angles (float32 acos loses ~0.02 degree there).
    Written per channel: reductions over dim 1 of an NCHW tensor are slow strided passes. The
    channel planes of a channels_last tensor are strided too (each of the ~15 passes below then
    takes ~2x longer), so both fields are first made planar (one copy where needed).
    """
    px, py, pz = pred.float().contiguous().unbind(1)
    gx, gy, gz = target.to(device=pred.device, dtype=torch.float32).contiguous().unbind(1)
    cx = torch.addcmul(py * gz, pz, gy, value=-1)
    cy = torch.addcmul(pz * gx, px, gz, value=-1)
    cz = torch.addcmul(px * gy, py, gx, value=-1)
    cross = cx.square_().addcmul_(cy, cy).addcmul_(cz, cz).sqrt_()
    dot = (px * gx).addcmul_(py, gy).addcmul_(pz, gz)
    return torch.atan2(cross, dot).mul_(180.0 / math.pi)


def angle_terms(
    pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(angles, valid, bad)`` [B,H,W] as :class:`NormalMetric` scores them, float32, ``valid``
    and ``bad`` as 0 / 1 masks (see :func:`indicator`): the angle in degrees, :data:`WORST_DEG`
    where the prediction has no direction (``bad``, on valid pixels), 0 on invalid pixels
    (``valid``: a target with a non-zero component and no NaN)."""
    pred = pred.float().contiguous()  # planar once: angle_deg then makes no copy
    target = target.to(device=pred.device, dtype=torch.float32).contiguous()
    gx, gy, gz = target.unbind(1)
    largest = torch.maximum(torch.maximum(gx.abs(), gy.abs()), gz.abs())  # NaN if any is NaN
    valid = indicator(torch.gt, largest, 0.0)
    px, py, pz = pred.unbind(1)
    length_sq = (px * px).addcmul_(py, py).addcmul_(pz, pz)  # NaN / inf / 0: no direction
    has_direction = indicator(torch.gt, length_sq, 0.0).mul_(
        indicator(torch.lt, length_sq, math.inf)
    )
    scored = has_direction.mul_(valid)  # valid pixels with a direction keep their angle
    bad = valid - scored
    ang = torch.nan_to_num(angle_deg(pred, target), nan=0.0).mul_(scored)
    return ang.add_(bad, alpha=WORST_DEG), valid, bad


def scored_angles(
    pred: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`angle_terms` with ``valid`` and ``bad`` as bool masks, for indexing (reports)."""
    ang, valid, bad = angle_terms(pred, target)
    return ang, valid > 0, bad > 0


class NormalMetric:
    """Streaming ``mean``, ``median``, ``rmse`` (degrees) and ``a11``, ``a22``, ``a30`` (percent of
    pixels within 11.25 / 22.5 / 30 degrees) of the angle between prediction and target.

    The angle does not depend on the vectors' lengths (the prediction and, harmlessly, the
    target are in effect normalized). Valid pixels: a non-zero target. ``median`` is within
    0.005 degree of numpy's median of all valid angles. With no valid pixel, NaN.

    A prediction that has no direction on a valid pixel (a NaN or infinite component, or a
    length of 0 or beyond float32's range, so it cannot be normalized) counts as the worst
    possible one, 180 degrees, in every statistic; ``nonfinite`` counts those pixels (a float).
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(len(_SUMS), dtype=torch.float64)
        self._hist = torch.zeros(NUM_BINS, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred [B,3,H,W] (any length); target [B,3,H,W], all-zero = invalid."""
        check_shapes("NormalMetric", pred, target, 3)
        ang, valid, bad = angle_terms(pred, target)
        ang, valid = ang.flatten(), valid.flatten()
        # bin of each angle; invalid pixels (angle 0) go to the overflow bin NUM_BINS, dropped
        bins = ang.mul(1.0 / BIN_DEG).clamp_(max=NUM_BINS - 1).add_(1.0 - valid, alpha=NUM_BINS)
        hist = count_bins(bins.long(), NUM_BINS + 1)[:NUM_BINS]
        sums = torch.stack([ang.sum().double(), torch.dot(ang, ang).double(), count_ones(bad)])
        self._sums = accumulate(self._sums, sums)
        self._hist = accumulate(self._hist, hist)

    def compute(self) -> dict[str, float]:
        s = dict(zip(_SUMS, reduced(self._sums).cpu().tolist()))
        hist = reduced(self._hist).cpu()
        cum = hist.cumsum(0)
        n = int(cum[-1])

        def within(deg: float) -> float:  # percent of angles below deg (a bin edge)
            return nan_if_empty(int(cum[round(deg / BIN_DEG) - 1]), n, 100.0)

        mean_sq = nan_if_empty(s["angle_sq"], n)
        return {
            "mean": nan_if_empty(s["angle"], n),
            "median": histogram_median(hist),
            "rmse": math.sqrt(mean_sq) if n > 0 else mean_sq,
            "a11": within(11.25),
            "a22": within(22.5),
            "a30": within(30.0),
            "nonfinite": float(s["nonfinite"]),
        }


def histogram_median(hist: torch.Tensor, bin_width: float = BIN_DEG) -> float:
    """Median of the values counted in ``hist`` (bin i = [i*w, (i+1)*w)), numpy's convention:
    the middle value, or the mean of the two middle ones. Each order statistic is placed inside
    its bin by linear interpolation, so the error is below one bin width."""
    n = int(hist.sum())
    if n == 0:
        return float("nan")
    cum = hist.cumsum(0)

    def order_stat(k: int) -> float:  # k-th smallest value, 1-based
        b = int(torch.searchsorted(cum, torch.tensor(k, dtype=cum.dtype)))
        before = int(cum[b - 1]) if b > 0 else 0
        return (b + (k - before - 0.5) / int(hist[b])) * bin_width

    if n % 2:
        return order_stat((n + 1) // 2)
    return 0.5 * (order_stat(n // 2) + order_stat(n // 2 + 1))
