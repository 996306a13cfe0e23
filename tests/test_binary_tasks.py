"""The tasks edge, saliency, parts and disparity: losses against hand-computed values, the saliency
metric on a hand-made split, files and colours, and a tiny model that trains all binary tasks
with seg / depth / normal under bf16 autocast."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cvmtl
from cvmtl.config import load_config
from cvmtl.losses import compute_losses
from cvmtl.scoring.saliency import SaliencyMetric
from cvmtl.tasks import get_task
from cvmtl.tasks.parts import PARTS_PALETTE

# a 2x3 map: logits and targets with two unknown (255) pixels
LOGITS = torch.tensor([[[[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]]])
TARGET = torch.tensor([[[1, 0, 255], [0, 1, 255]]])
LABELED = torch.ones(1, dtype=torch.bool)


def sp(x: float) -> float:
    """log(1 + e^x): the BCE of logit -x on a positive, of x on a negative."""
    return math.log1p(math.exp(x))


@pytest.fixture(scope="module")
def cfg():
    return load_config(None, ["tasks=[seg,depth,normal,edge,saliency]"])


def reduce(terms_weights) -> float:
    terms, weights = terms_weights
    return float(terms.sum() / weights.sum())


def test_edge_loss_is_weighted_bce(cfg):
    w = cfg.loss.edge_pos_weight
    assert w == 0.95
    # positives 2, 3; negatives -1, 0; mean over the 4 known pixels
    want = (w * sp(-2.0) + (1 - w) * sp(-1.0) + (1 - w) * sp(0.0) + w * sp(-3.0)) / 4
    spec = get_task("edge")
    assert reduce(spec.loss(LOGITS, TARGET, LABELED, cfg)) == pytest.approx(want, rel=1e-6)
    assert float(spec.loss_weights(TARGET, LABELED, cfg).sum()) == 4
    batch = {"edge": TARGET, "has": {"edge": LABELED}}
    got = compute_losses({"edge": LOGITS}, batch, load_config(None, ["tasks=[edge]"]))
    assert float(got["edge"]) == pytest.approx(want, rel=1e-6)


def test_saliency_loss_is_bce(cfg):
    want = (sp(-2.0) + sp(-1.0) + sp(0.0) + sp(-3.0)) / 4
    spec = get_task("saliency")
    assert reduce(spec.loss(LOGITS, TARGET, LABELED, cfg)) == pytest.approx(want, rel=1e-6)
    # an unlabeled sample has no term and no weight
    terms, weights = spec.loss(LOGITS, TARGET, torch.zeros(1, dtype=torch.bool), cfg)
    assert float(terms.abs().sum()) == 0 and float(weights.sum()) == 0


def test_parts_loss_and_metric(cfg):
    spec = get_task("parts")
    assert spec.out_channels(21) == 7 and len(spec.classes) == 7
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 4, 5, generator=g)
    target = torch.randint(0, 7, (2, 4, 5), generator=g)
    target[0, 0] = 255
    want = F.cross_entropy(logits, target, ignore_index=255)
    assert reduce(spec.loss(logits, target, torch.ones(2, dtype=torch.bool), cfg)) == (
        pytest.approx(float(want), rel=1e-6)
    )
    metric = spec.metric(21, cfg.eval)
    metric.update(F.one_hot(target.clamp(max=6), 7).permute(0, 3, 1, 2).float(), target)
    out = metric.compute()  # the prediction is the target: every scored pixel right
    assert out["miou"] == 100.0 and out["pixel_acc"] == 100.0
    assert len(out["iou_per_class"]) == 7 and spec.delta_metrics == {"miou": True}


def saliency_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 1x5 images: A (object on 2 px, one unknown px), B (no object)."""
    prob = torch.tensor([[[0.92, 0.42, 0.62, 0.12, 0.92]], [[0.12] * 5]], dtype=torch.float64)
    target = torch.tensor([[[1, 1, 0, 0, 255]], [[0] * 5]])
    return torch.logit(prob).float().unsqueeze(1), target


def test_saliency_metric_hand_computed():
    logits, target = saliency_split()
    metric = SaliencyMetric()
    metric.update(logits, target)
    out = metric.compute()
    # thresholds 0.65..0.90: only 0.92 is positive: P = 1, R = 1/2, F_0.3 = 1.3 * .5 / .8
    assert out["maxf"] == pytest.approx(100 * 1.3 * 0.5 / 0.8)
    # thresholds 0.15..0.40: IoU 2/3 on A, 1 on B (no object, nothing predicted)
    assert out["miou"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert out["nonfinite"] == 0
    two = SaliencyMetric()
    two.update(logits[:1], target[:1])
    two.update(logits[1:], target[1:])
    assert two.compute() == pytest.approx(out)


def test_saliency_nonfinite_is_wrong():
    logits, target = saliency_split()
    logits[0, 0, 0, 0] = float("nan")  # on an object pixel: missed at every threshold
    metric = SaliencyMetric()
    metric.update(logits, target)
    out = metric.compute()
    assert out["nonfinite"] == 1
    # thresholds 0.15..0.40: A predicts 0.42 (object) and 0.62: P = 1/2, R = 1/2
    assert out["maxf"] == pytest.approx(100 * 1.3 * 0.25 / (0.15 + 0.5))


def test_disparity(cfg):
    spec = get_task("disparity")
    assert spec.label.scale_power == 1.0
    out = spec.activate(torch.tensor([-200.0, 0.0, 5.0]).view(1, 3, 1, 1), cfg.model)
    assert (out > 0).all() and float(out[0, 2]) == pytest.approx(5.0 + math.log1p(math.exp(-5)))
    pred = torch.tensor([[[[1.0, 2.0, 4.0]]]])
    target = torch.tensor([[[[2.0, 0.0, 3.0]]]])
    assert reduce(spec.loss(pred, target, LABELED, cfg)) == pytest.approx(1.0)  # (1 + 1) / 2
    metric = spec.metric(0, cfg.eval)
    metric.update(pred, target)
    assert metric.compute()["abs_err"] == pytest.approx(1.0)
    files = spec.encode(np.array([[1.5, 0.0]], np.float32), {})
    assert files[""].tolist() == [[385, 0]] and files[""].dtype == np.uint16


def test_binary_predictions_colours_and_files():
    for name in ("edge", "saliency"):
        spec = get_task(name)
        prob = spec.predict(torch.logit(torch.tensor([0.0, 0.5, 1.0])).view(1, 1, 1, 3))
        assert prob.shape == (1, 1, 3)
        rgb = spec.colorize(prob[0].numpy(), {})
        assert rgb.shape == (1, 3, 3) and rgb[0, :, 0].tolist() == [0, 128, 255]
        assert spec.colorize(np.array([[0, 1, 255]]), {})[0, :, 1].tolist() == [0, 255, 0]
        files = spec.encode(prob[0].numpy(), {})
        assert list(files) == [""] and files[""].dtype == np.uint8
        back = spec.extras["from_probabilities"](spec.probabilities(LOGITS))
        assert torch.allclose(back, LOGITS, atol=1e-4)
    parts = get_task("parts")
    labels = np.array([[0, 6, 255]])
    assert parts.colorize(labels, {})[0, 1].tolist() == PARTS_PALETTE[6]
    assert set(parts.encode(labels, {})) == {"", "_color"}


def test_tiny_model_trains_binary_tasks_under_bf16():
    tasks = ["seg", "depth", "normal", "edge", "saliency"]
    overrides = ["model.neck_channels=16", "model.head_channels=8", "data.crop=[32,48]"]
    cfg = load_config(None, [f"tasks=[{','.join(tasks)}]", *overrides])
    torch.manual_seed(0)
    model = cvmtl.build_model(cfg, backbone_kwargs={"layers": [1, 1, 1, 1]})
    g = torch.Generator().manual_seed(1)
    n, h, w = 2, 32, 48
    edge = (torch.rand(n, h, w, generator=g) < 0.1).long()
    edge[0, :3] = 255
    batch = {
        "image": torch.randn(n, 3, h, w, generator=g),
        "seg": torch.randint(0, cfg.data.num_classes, (n, h, w), generator=g),
        "depth": torch.rand(n, 1, h, w, generator=g) * 5 + 0.5,
        "normal": F.normalize(torch.randn(n, 3, h, w, generator=g), dim=1),
        "edge": edge,
        "saliency": (torch.rand(n, h, w, generator=g) < 0.4).long(),
        "has": {t: torch.ones(n, dtype=torch.bool) for t in tasks},
    }
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch["image"])
        assert out["edge"].shape == (n, 1, h, w) and out["saliency"].shape == (n, 1, h, w)
        losses = compute_losses(out, batch, cfg)
    assert sorted(losses) == sorted(tasks)
    params = [p for p in model.parameters() if p.requires_grad]
    for task, loss in losses.items():
        assert loss.dtype == torch.float32 and torch.isfinite(loss), task
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        norms = [float(gr.float().norm()) for gr in grads if gr is not None]
        assert norms and all(math.isfinite(v) for v in norms) and max(norms) > 0, task
