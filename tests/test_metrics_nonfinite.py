"""Non-finite predictions are the worst case in every metric, and counted (issue 16, item 6).

Before: a NaN normal fell into bin 0 of the angle histogram (perfect in a11 and the median while
the mean went NaN), a NaN depth made every depth metric NaN, and a NaN logit at the target's
class was argmax's pick (correct). Values below are computed by hand.
"""

import math

import pytest
import torch

from cvmtl.metrics import DepthMetric, NormalMetric, SegMetric

NAN, INF = float("nan"), float("inf")


def _pixels(vectors: list[list[float]]) -> torch.Tensor:
    """[1, channels, 1, N] from N per-pixel vectors."""
    return torch.tensor(vectors).T.reshape(1, len(vectors[0]), 1, len(vectors))


def test_normal_without_direction_is_180_degrees():
    def tilt(deg):
        return [math.sin(math.radians(deg)), 0.0, math.cos(math.radians(deg))]

    up, diag = [0.0, 0.0, 1.0], [3**-0.5] * 3
    pred = [tilt(0), tilt(10), tilt(20), [NAN, 0.0, 1.0], [INF, 0.0, 0.0], [0.0, 0.0, 0.0]]
    target = [up, up, up, up, diag, up]  # (inf, 0, 0) vs diag: atan2(inf, inf) = 45 degrees
    pred.append([NAN, NAN, NAN])  # on an invalid target: not counted
    target.append([0.0, 0.0, 0.0])
    m = NormalMetric()
    m.update(_pixels(pred), _pixels(target))
    r = m.compute()
    # valid angles: 0, 10, 20, 180, 180, 180
    assert r["nonfinite"] == 3.0
    assert r["mean"] == pytest.approx(570 / 6, abs=1e-4)
    assert r["median"] == pytest.approx(100.0, abs=0.01)  # (20 + 180) / 2
    assert r["rmse"] == pytest.approx(math.sqrt((100 + 400 + 3 * 180**2) / 6), abs=1e-4)
    assert (r["a11"], r["a22"], r["a30"]) == pytest.approx((100 / 3, 50.0, 50.0))


def test_normal_all_bad_is_180_and_finite_input_counts_zero():
    m = NormalMetric()
    m.update(
        torch.full((2, 3, 2, 2), NAN),
        _pixels([[0.0, 0.0, 1.0]] * 4).view(1, 3, 2, 2).repeat(2, 1, 1, 1),
    )
    r = m.compute()
    assert r["nonfinite"] == 8.0 and r["mean"] == pytest.approx(180.0)
    assert r["median"] == pytest.approx(180.0, abs=0.005) and r["a30"] == 0.0
    clean = NormalMetric()
    clean.update(_pixels([[0.0, 1.0, 1.0]]), _pixels([[0.0, 0.0, 1.0]]))
    assert clean.compute()["nonfinite"] == 0.0 and clean.compute()["mean"] == pytest.approx(45.0)


def test_depth_nonfinite_is_the_farther_end_of_the_range():
    # range [1e-3, 10], midpoint 5.0005: a target below it is charged 10, above it 1e-3
    pred = [2.0, NAN, INF, -INF, 4.0, NAN]
    target = [1.0, 1.0, 8.0, 2.0, 4.0, 0.0]  # the last is invalid: its NaN is not counted
    m = DepthMetric(1e-3, 10.0)
    m.update(_pixels([[v] for v in pred]), _pixels([[v] for v in target]))
    r = m.compute()
    p = [2.0, 10.0, 1e-3, 10.0, 4.0]
    g = [1.0, 1.0, 8.0, 2.0, 4.0]
    err = [abs(a - b) for a, b in zip(p, g)]
    assert r["nonfinite"] == 3.0
    assert r["abs_err"] == pytest.approx(sum(err) / 5)
    assert r["rel_err"] == pytest.approx(sum(e / b for e, b in zip(err, g)) / 5)
    assert r["sq_rel"] == pytest.approx(sum(e * e / b for e, b in zip(err, g)) / 5)
    assert r["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in err) / 5))
    logs = [math.log(a / b) ** 2 for a, b in zip(p, g)]
    assert r["log_rmse"] == pytest.approx(math.sqrt(sum(logs) / 5))
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((20.0, 20.0, 20.0))


def test_depth_nonfinite_fails_every_delta_even_where_the_range_end_would_pass():
    m = DepthMetric(1.0, 2.0)  # NaN at target 1.5 is charged 1.0: ratio 1.5 < 1.25**2
    m.update(_pixels([[NAN], [1.5]]), _pixels([[1.5], [1.5]]))
    r = m.compute()
    assert r["nonfinite"] == 1.0 and r["abs_err"] == pytest.approx(0.25)
    assert (r["delta1"], r["delta2"], r["delta3"]) == pytest.approx((50.0, 50.0, 50.0))


def test_seg_nonfinite_logits_are_never_correct():
    logits = [
        [5.0, 0.0, 0.0],  # target 0: correct
        [0.0, NAN, 0.0],  # target 1: argmax would pick the NaN, class 1
        [0.0, 0.0, INF],  # target 2: argmax 2
        [0.0, -INF, 3.0],  # target 2: argmax 2
        [NAN, NAN, NAN],  # ignored target: not counted
    ]
    m = SegMetric(3)
    m.update(_pixels(logits), torch.tensor([[[0, 1, 2, 2, 255]]]))
    r = m.compute()
    assert r["nonfinite"] == 3.0
    assert m.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]  # the rest: invalid column
    assert r["pixel_acc"] == pytest.approx(25.0)
    assert r["iou_per_class"] == pytest.approx([100.0, 0.0, 0.0])
    assert r["miou"] == pytest.approx(100 / 3)
    half = SegMetric(3)
    half.update(_pixels(logits).to(torch.bfloat16), torch.tensor([[[0, 1, 2, 2, 255]]]))
    assert half.compute()["nonfinite"] == 3.0 and half.compute()["pixel_acc"] == 25.0


def test_seg_float_labels_nan_and_int_labels_count_zero():
    m = SegMetric(3)
    m.update(torch.tensor([[[0.0, NAN, 1.0]]]), torch.tensor([[[0, 0, 1]]]))
    r = m.compute()
    assert r["nonfinite"] == 1.0 and r["pixel_acc"] == pytest.approx(200 / 3)
    ints = SegMetric(3)
    ints.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 0]]]))
    assert ints.compute()["nonfinite"] == 0.0


def test_nonfinite_streams_over_batches_and_resets():
    m = DepthMetric()
    for _ in range(3):
        m.update(torch.full((1, 1, 2, 2), NAN), torch.ones(1, 1, 2, 2))
    assert m.compute()["nonfinite"] == 12.0
    m.reset()
    m.update(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert m.compute()["nonfinite"] == 0.0


def test_scoring_helpers_for_report_statistics():
    """scored_depth / scored_angles: the same rule for anything that bins errors (reports)."""
    from cvmtl.scoring.depth import scored_depth
    from cvmtl.scoring.normals import scored_angles

    p, g, valid, bad = scored_depth(
        _pixels([[NAN], [INF], [20.0], [NAN]]), _pixels([[1.0], [9.0], [4.0], [0.0]]), 1e-3, 10.0
    )
    assert valid.flatten().tolist() == [True, True, True, False]
    assert bad.flatten().tolist() == [True, True, False, False]
    assert p.flatten()[:3].tolist() == pytest.approx([10.0, 1e-3, 10.0])
    ang, valid, bad = scored_angles(
        _pixels([[NAN, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]),
        _pixels([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
    )
    assert ang.flatten().tolist() == pytest.approx([180.0, 45.0, 0.0], abs=1e-4)
    assert valid.flatten().tolist() == [True, True, False]
    assert bad.flatten().tolist() == [True, False, False]
