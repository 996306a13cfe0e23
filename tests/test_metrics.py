"""Metrics on hand-built inputs with known answers and against a numpy reference."""

import json
import math

import numpy as np
import pytest
import torch

from cvmtl.config import Config
from cvmtl.metrics import DepthMetric, NormalMetric, SegMetric, build_metrics, delta_m
from cvmtl.scoring.normals import histogram_median
from cvmtl.scoring.segmentation import NO_PREDICTION, class_labels

# ---------------------------------------------------------------- numpy references


def np_seg(pred, target, c, ignore=255):
    valid = target != ignore
    cm = np.zeros((c, c), np.int64)
    np.add.at(cm, (target[valid], pred[valid]), 1)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return {"miou": iou.mean() * 100, "pixel_acc": tp.sum() / cm.sum() * 100}


def np_depth(pred, target, lo=1e-3, hi=10.0):
    valid = (target > 0) & (target >= lo) & (target <= hi)
    p = np.clip(pred[valid].astype(np.float64), lo, hi)
    g = target[valid].astype(np.float64)
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_err": np.mean(np.abs(p - g)),
        "rel_err": np.mean(np.abs(p - g) / g),
        "sq_rel": np.mean((p - g) ** 2 / g),
        "rmse": np.sqrt(np.mean((p - g) ** 2)),
        "log_rmse": np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)),
        "delta1": np.mean(ratio < 1.25) * 100,
        "delta2": np.mean(ratio < 1.25**2) * 100,
        "delta3": np.mean(ratio < 1.25**3) * 100,
    }


def np_angles(pred, target):
    """Valid angles (float64 degrees) of [B,3,H,W] arrays, acos as in LibMTL."""
    p = pred.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, 3)
    g = target.astype(np.float64).transpose(0, 2, 3, 1).reshape(-1, 3)
    valid = np.any(g != 0, axis=1)
    p = p[valid] / np.linalg.norm(p[valid], axis=1, keepdims=True)
    g = g[valid] / np.linalg.norm(g[valid], axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(p * g, axis=1), -1, 1)))


def np_normal(pred, target):
    a = np_angles(pred, target)
    return {
        "mean": a.mean(),
        "median": np.median(a),
        "rmse": np.sqrt(np.mean(a**2)),
        "a11": np.mean(a < 11.25) * 100,
        "a22": np.mean(a < 22.5) * 100,
        "a30": np.mean(a < 30) * 100,
    }


def random_batch(b, h=12, w=16, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g)
    seg = torch.randint(0, c, (b, h, w), generator=g)
    seg[torch.rand(b, h, w, generator=g) < 0.1] = 255
    depth_t = torch.rand(b, 1, h, w, generator=g) * 12  # some beyond max_depth
    depth_t[torch.rand(b, 1, h, w, generator=g) < 0.2] = 0
    depth_p = depth_t + torch.randn(b, 1, h, w, generator=g)  # some negative: clamped
    normal_t = torch.nn.functional.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    normal_t[:, :, :2] = 0  # invalid rows
    normal_p = normal_t * 2 + 0.5 * torch.randn(b, 3, h, w, generator=g)  # not unit length
    return logits, seg, depth_p, depth_t, normal_p, normal_t


def close(a: dict, b: dict, rel=1e-5, abs_=1e-6):
    for k in b:
        assert a[k] == pytest.approx(b[k], rel=rel, abs=abs_), k


# ---------------------------------------------------------------- segmentation


def test_seg_hand_confusion():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    m = SegMetric(3)
    m.update(pred, target)
    # (t,p): (0,0) (0,1) (1,1) (1,1) (2,0); the 255 pixel is ignored.
    assert m.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    r = m.compute()
    assert r["iou_per_class"] == pytest.approx([100 / 3, 200 / 3, 0.0])
    assert r["miou"] == pytest.approx(100 / 3)
    assert r["pixel_acc"] == pytest.approx(60.0)


def test_seg_absent_class_left_out_and_json_safe():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
    pred = torch.tensor([[[0, 1, 1], [1, 0, 2]]])
    m = SegMetric(5)
    m.update(pred, target)
    r = m.compute()
    assert r["iou_per_class"][3] is None and r["iou_per_class"][4] is None
    assert r["miou"] == pytest.approx(100 / 3)
    json.dumps(r, allow_nan=False)


def test_seg_logits_and_invalid_prediction():
    m = SegMetric(2)
    logits = torch.tensor([[[[5.0, 0.0]], [[0.0, 5.0]]]])  # [1,2,1,2] -> labels [0, 1]
    m.update(logits, torch.tensor([[[0, 0]]]))
    assert m.compute()["pixel_acc"] == pytest.approx(50.0)
    m2 = SegMetric(2)
    m2.update(torch.tensor([[[7, 0]]]), torch.tensor([[[0, 0]]]))  # 7: wrong, not wrapped
    r = m2.compute()
    assert r["pixel_acc"] == pytest.approx(50.0) and r["iou_per_class"][0] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="channels"):
        m.update(torch.zeros(1, 3, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long))


def test_class_labels_are_argmax_with_no_prediction_for_nonfinite_pixels():
    logits = torch.randn(2, 7, 5, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(class_labels(logits), logits.argmax(1))
    cl = logits.contiguous(memory_format=torch.channels_last).to(torch.bfloat16)
    assert torch.equal(class_labels(cl), cl.float().argmax(1))
    # [1, 3, 1, 4]: a tie (first maximum wins), NaN, +inf, and -inf beside finite logits
    tie_nan_inf = torch.tensor([[2.0, 2.0, 1.0], [0.0, math.nan, 1.0], [0.0, math.inf, 0.0]])
    pixels = torch.cat([tie_nan_inf, torch.tensor([[-math.inf, 0.0, 1.0]])]).T[None, :, None]
    assert class_labels(pixels).tolist() == [[[0, NO_PREDICTION, NO_PREDICTION, NO_PREDICTION]]]


def test_seg_negative_labels_are_no_prediction_and_large_ones_wrong():
    m = SegMetric(3)
    m.update(torch.tensor([[[0, -1, -7, 3, 99, 2]]]), torch.tensor([[[0, 1, 1, 2, 2, 255]]]))
    r = m.compute()
    assert r["nonfinite"] == 2.0  # -1 and -7; the ignored pixel's 2 is not scored
    assert m.confusion.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert r["pixel_acc"] == pytest.approx(20.0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.float32])
def test_seg_labels_of_any_dtype_count_as_int64_ones(dtype):
    # uint8 cannot hold the clamp's -1: a 255 (ignore) target or a large uint8 label must not
    # wrap onto a class; float labels truncate as .long() does
    pred = torch.tensor([[[0, 1, 2, 200, 255, 1, 2]]])
    target = torch.tensor([[[0, 1, 1, 2, 2, 255, 0]]])
    reference = SegMetric(3)
    reference.update(pred, target)
    m = SegMetric(3)
    m.update(pred.to(dtype), target.to(torch.uint8 if dtype == torch.uint8 else torch.int64))
    assert torch.equal(m._cm, reference._cm)
    assert m.confusion.tolist() == [[1, 0, 1], [0, 1, 1], [0, 0, 0]]
    assert m.compute()["pixel_acc"] == pytest.approx(100 * 2 / 6)


def test_class_tasks_decide_labels_in_the_prediction_step():
    from cvmtl.engine.views import decide

    logits, seg, depth, _, normal, _ = random_batch(2, c=8, seed=3)
    out = decide({"seg": logits, "parts": logits[:, :7], "depth": depth, "normal": normal})
    assert torch.equal(out["seg"], class_labels(logits))
    assert torch.equal(out["parts"], class_labels(logits[:, :7]))
    assert out["depth"] is depth and out["normal"] is normal  # regression: passed through
    direct, decided = SegMetric(8), SegMetric(8)
    direct.update(logits, seg)
    decided.update(out["seg"], seg)
    assert direct.compute() == decided.compute()


def test_seg_random_streaming_matches_numpy():
    m = SegMetric(5)
    preds, targets = [], []
    for i, b in enumerate([1, 3, 2]):
        logits, seg, *_ = random_batch(b, seed=i)
        m.update(logits.to(torch.bfloat16) if i == 1 else logits, seg)
        preds.append(logits.to(torch.bfloat16).float() if i == 1 else logits)
        targets.append(seg)
    pred = torch.cat(preds).argmax(1).numpy()
    close(m.compute(), np_seg(pred, torch.cat(targets).numpy(), 5))


# ---------------------------------------------------------------- shared helpers


def test_indicator_is_a_float_mask_with_nan_false():
    from cvmtl.scoring._common import indicator

    x = torch.tensor([-1.0, 0.0, 2.0, math.nan, math.inf])
    mask = indicator(torch.gt, x, 0.0)
    assert mask.dtype == torch.float32
    assert mask.tolist() == [0.0, 0.0, 1.0, 0.0, 1.0]
    assert indicator(torch.lt, x.abs(), math.inf).tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_count_ones_is_exact_beyond_float32_integers():
    from cvmtl.scoring._common import count_ones

    mask = torch.ones(3, 2**23 + 1)  # 25,165,827 ones: more than float32 counts exactly (2**24)
    mask[1, ::7] = 0
    exact = 3 * (2**23 + 1) - len(range(0, 2**23 + 1, 7))
    assert count_ones(mask).dtype == torch.float64
    assert count_ones(mask).item() == exact


# ---------------------------------------------------------------- depth


def test_depth_hand_values():
    target = torch.tensor([[[[1.0, 2.0, 0.0], [4.0, 12.0, 5.0]]]])
    pred = torch.tensor([[[[2.0, 2.0, 5.0], [3.0, 1.0, 20.0]]]])
    m = DepthMetric(1e-3, 10.0)
    m.update(pred, target)
    r = m.compute()
    # valid (p, g): (2,1) (2,2) (3,4) (10,5): 0 and 12 are invalid; 20 is clamped to 10.
    assert r["abs_err"] == pytest.approx((1 + 0 + 1 + 5) / 4)
    assert r["rel_err"] == pytest.approx((1 + 0 + 0.25 + 1) / 4)
    assert r["sq_rel"] == pytest.approx((1 + 0 + 0.25 + 5) / 4)
    assert r["rmse"] == pytest.approx(math.sqrt((1 + 0 + 1 + 25) / 4))
    logs = [math.log(2), 0, math.log(0.75), math.log(2)]
    assert r["log_rmse"] == pytest.approx(math.sqrt(sum(x * x for x in logs) / 4))
    # ratios 2, 1, 4/3, 2
    assert r["delta1"] == pytest.approx(25.0)
    assert r["delta2"] == pytest.approx(50.0)
    assert r["delta3"] == pytest.approx(50.0)


def test_depth_nan_prediction_on_invalid_pixel_is_ignored():
    m = DepthMetric()
    m.update(torch.tensor([[[[float("nan"), 1.0]]]]), torch.tensor([[[[0.0, 2.0]]]]))
    assert m.compute()["abs_err"] == pytest.approx(1.0)


def test_depth_random_streaming_matches_numpy():
    m = DepthMetric(1e-3, 10.0)
    ps, ts = [], []
    for i, b in enumerate([2, 1, 4]):
        *_, dp, dt, _, _ = random_batch(b, seed=10 + i)
        m.update(dp.half() if i == 2 else dp, dt)
        ps.append(dp.half().float() if i == 2 else dp)
        ts.append(dt)
    close(m.compute(), np_depth(torch.cat(ps).numpy(), torch.cat(ts).numpy()), rel=1e-4)


def test_depth_targets_below_1e6_count_as_1e6_when_min_depth_is_0():
    m = DepthMetric(min_depth=0.0, max_depth=10.0)
    # predictions are clamped to 1e-6 m; a valid target below it is taken at 1e-6 m too, so the
    # ratio stays finite; a 0 target is invalid
    m.update(
        torch.tensor([1e-9, 2e-6, 5.0]).view(1, 1, 1, 3),
        torch.tensor([1e-7, 1e-6, 0.0]).view(1, 1, 1, 3),
    )
    r = m.compute()
    assert r["rel_err"] == pytest.approx(0.5)  # (0 + 1) / 2 valid pixels
    assert r["delta1"] == pytest.approx(50.0)


def test_depth_empty_is_nan():
    m = DepthMetric()
    m.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    r = m.compute()
    assert r.pop("nonfinite") == 0.0
    assert all(math.isnan(v) for v in r.values())


# ---------------------------------------------------------------- normals


def test_normal_hand_values():
    angles = [0.0, 10.0, 20.0, 40.0]
    pred = [[3 * math.sin(math.radians(a)), 0, 3 * math.cos(math.radians(a))] for a in angles]
    pred.append([1.0, 0.0, 0.0])  # invalid target below: left out
    pred_t = torch.tensor(pred).T.reshape(1, 3, 1, 5)
    target = torch.tensor([[0.0, 0.0, 1.0]] * 4 + [[0.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 5)
    m = NormalMetric()
    m.update(pred_t, target)
    r = m.compute()
    assert r["mean"] == pytest.approx(17.5, abs=1e-4)
    assert r["median"] == pytest.approx(15.0, abs=0.01)
    assert r["rmse"] == pytest.approx(math.sqrt(525), abs=1e-4)
    assert (r["a11"], r["a22"], r["a30"]) == pytest.approx((50.0, 75.0, 75.0))


def test_normal_random_streaming_matches_numpy():
    m = NormalMetric()
    ps, ts = [], []
    for i, b in enumerate([3, 1, 2]):
        *_, npred, ntgt = random_batch(b, h=24, w=20, seed=20 + i)
        m.update(npred, ntgt)
        ps.append(npred)
        ts.append(ntgt)
    ref = np_normal(torch.cat(ps).numpy(), torch.cat(ts).numpy())
    r = m.compute()
    close(
        {k: v for k, v in r.items() if k != "median"},
        {k: ref[k] for k in ref if k != "median"},
        rel=1e-4,
        abs_=1e-4,
    )
    assert abs(r["median"] - ref["median"]) < 0.01


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 100001])
@pytest.mark.parametrize("spread", [0.05, 5.0, 60.0])
def test_normal_median_within_0_01_degree(n, spread):
    """The histogram median (0.005-degree bins, interpolated) against numpy's exact median."""
    g = torch.Generator().manual_seed(n)
    ang = (torch.rand(n, generator=g, dtype=torch.float64) ** 3) * spread  # skewed
    phi = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    t = torch.deg2rad(ang)
    pred = torch.stack([t.sin() * phi.cos(), t.sin() * phi.sin(), t.cos()]).view(1, 3, 1, n)
    target = torch.zeros(1, 3, 1, n, dtype=torch.float64)
    target[:, 2] = 1
    m = NormalMetric()
    m.update(pred.float(), target.float())
    exact = np.median(np_angles(pred.float().numpy(), target.numpy()))
    assert abs(m.compute()["median"] - exact) < 0.01


def test_histogram_median_even_count_far_apart():
    hist = torch.zeros(36000, dtype=torch.int64)
    hist[0] = 1
    hist[20000] = 1  # values ~0.0025 and ~100.0025: numpy median ~50
    assert histogram_median(hist) == pytest.approx(50.0025, abs=0.005)


# ---------------------------------------------------------------- build_metrics


def test_build_metrics_uses_eval_range():
    cfg = Config()
    cfg.eval.min_depth, cfg.eval.max_depth = 0.5, 4.0
    ms = build_metrics(["seg", "depth", "normal"], 7, cfg)
    assert ms["seg"].num_classes == 7 and ms["depth"].max_depth == 4.0
    assert build_metrics(["depth"], 7, cfg.eval)["depth"].min_depth == 0.5
    with pytest.raises(ValueError, match="edgy"):
        build_metrics(["edgy"], 7, cfg)


# ---------------------------------------------------------------- delta_m


def test_delta_m_hand_values_and_signs():
    results = {"seg": {"miou": 50.0, "pixel_acc": 70.0}, "depth": {"abs_err": 0.4, "rel_err": 0.2}}
    base = {"seg": {"miou": 40.0, "pixel_acc": 70.0}, "depth": {"abs_err": 0.5, "rel_err": 0.1}}
    d = delta_m(results, base, ["seg", "depth"])
    assert d["per_metric"] == pytest.approx(
        {"seg/miou": 25.0, "seg/pixel_acc": 0.0, "depth/abs_err": 20.0, "depth/rel_err": -100.0}
    )
    assert d["per_task"] == pytest.approx({"seg": 12.5, "depth": -40.0})
    assert d["overall"] == pytest.approx(-13.75)


def test_delta_m_normal_metrics_and_errors():
    base = {"normal": {"mean": 20.0, "median": 10.0, "a11": 40.0, "a22": 50.0, "a30": 60.0}}
    res = {"normal": {"mean": 22.0, "median": 10.0, "a11": 44.0, "a22": 50.0, "a30": 60.0}}
    d = delta_m(res, base, ["normal"])
    assert d["per_metric"]["normal/mean"] == pytest.approx(-10.0)  # lower is better: worse
    assert d["per_metric"]["normal/a11"] == pytest.approx(10.0)
    assert d["overall"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="normal/median"):
        delta_m({"normal": {"mean": 1.0}}, base, ["normal"])
    with pytest.raises(ValueError, match="baselines lack seg/miou"):
        delta_m({"seg": {"miou": 1.0, "pixel_acc": 1.0}}, base, ["seg"])


# ---------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_without_host_sync():
    logits, seg, dp, dt, npred, ntgt = random_batch(4, h=48, w=64, c=5, seed=3)
    cpu = build_metrics(["seg", "depth", "normal"], 5, None)
    gpu = build_metrics(["seg", "depth", "normal"], 5, None)
    inputs = {"seg": (logits, seg), "depth": (dp, dt), "normal": (npred, ntgt)}
    dev = [(p.cuda(), t.cuda()) for p, t in inputs.values()]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync inside update raises
    try:
        for m, (p, t) in zip(gpu.values(), dev):
            m.update(p, t)
            m.update(p.bfloat16(), t)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for m, (p, t) in zip(cpu.values(), inputs.values()):
        m.update(p, t)
        m.update(p.bfloat16(), t)
    for task in cpu:
        a, b = gpu[task].compute(), cpu[task].compute()
        for k in b:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-4), (task, k)
