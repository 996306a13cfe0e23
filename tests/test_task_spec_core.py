"""The training / evaluation path asks the TaskSpec: tasks registered here (a 1-channel "gray"
regression with zoom power 2, a 2-channel "flow" vector negated in x on a flip, a thin binary
"fgedge" map, a 300-class "many" map) go through the transforms, metrics, evaluator views,
TensorBoard panels and the ``fixed`` balancer with no code that names them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.balancers import build_balancer
from cvmtl.config import Config
from cvmtl.data.transforms import EvalTransform, scale_crop_flip
from cvmtl.engine.evaluator import evaluate, predict
from cvmtl.engine.logging import prediction_panels, task_summary
from cvmtl.metrics import build_metrics
from cvmtl.tasks import TASKS, LabelKind, TaskSpec, register
from cvmtl.tasks.spec import CLASSES, THIN_BINARY

GRAY = LabelKind("gray", 1, fill=-1.0, scale_power=2.0)
FLOW = LabelKind("flow2", 2, fill=0.0, scale_power=1.0, flip_sign=(-1.0, 1.0))


class MeanAbs:
    """Mean |pred - target| over pixels whose target is not ``fill`` (the tasks' tiny metric)."""

    def __init__(self, channels: int, fill: float) -> None:
        self.channels, self.fill, self.sum, self.count = channels, fill, 0.0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = (target != self.fill).all(dim=1, keepdim=True).expand_as(target)
        self.sum += float((pred.float() - target).abs()[valid].sum())
        self.count += int(valid.sum())

    def compute(self) -> dict[str, float]:
        return {"mae": self.sum / max(1, self.count), "count": float(self.count)}


class BinaryAcc:
    """Accuracy of ``logit > 0`` on pixels labeled 0 / 1 (255 unknown)."""

    def __init__(self, channels: int) -> None:
        self.right, self.count = 0, 0

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        valid = target != 255
        self.right += int(((pred[:, 0] > 0).long() == target)[valid].sum())
        self.count += int(valid.sum())

    def compute(self) -> dict[str, float]:
        return {"acc": 100.0 * self.right / max(1, self.count)}


def _l1(pred, target, labeled, cfg):
    valid = (target != -1).float()
    return (pred - target).abs() * valid, valid


def _spec(name: str, label: LabelKind, channels: int | None, metric, metrics: dict, **kw):
    return TaskSpec(
        name=name, label=label, channels=channels, loss=_l1,
        loss_weights=lambda target, labeled, cfg: (target != -1).float(),
        metric=metric, metrics=metrics, delta_metrics=metrics,
        colorize=lambda x, info: np.zeros((*np.asarray(x).shape[:2], 3), np.uint8) + 7,
        encode=lambda x, info: {}, **kw,
    )  # fmt: skip


@pytest.fixture
def custom_tasks():
    specs = [
        _spec("gray", GRAY, 1, lambda c, ev: MeanAbs(c, -1.0), {"mae": False},
              predict=lambda x: x[:, 0]),
        _spec("flow", FLOW, 2, lambda c, ev: MeanAbs(c, 0.0), {"mae": False},
              predict=lambda x: x.permute(0, 2, 3, 1)),
        _spec("fgedge", THIN_BINARY, 1, lambda c, ev: BinaryAcc(c), {"acc": True},
              probabilities=torch.sigmoid, predict=lambda x: torch.sigmoid(x[:, 0])),
        _spec("many", CLASSES, None, lambda c, ev: BinaryAcc(c), {"acc": True},
              probabilities=lambda x: x.float().softmax(dim=1), predict=lambda x: x.argmax(1)),
    ]  # fmt: skip
    for spec in specs:
        register(spec)
    yield {spec.name: spec for spec in specs}
    for spec in specs:
        TASKS.pop(spec.name)


def _sample() -> dict:
    gray = np.arange(24, dtype=np.float32).reshape(4, 6) / 4
    flow = np.stack([gray + 1, -gray - 1], axis=-1)
    edge = np.zeros((4, 6), np.int64)
    edge[1, 1:5] = 1  # a one-pixel-wide line
    edge[3, 0] = 255
    rng = np.random.default_rng(0)
    return {
        "image": rng.integers(0, 256, (4, 6, 3), dtype=np.uint8),
        "gray": gray, "flow": flow, "fgedge": edge, "many": rng.integers(0, 300, (4, 6)),
        "has": {"gray": True, "flow": True, "fgedge": True, "many": True},
    }  # fmt: skip


def _up2(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 2, 0), 2, 1)


def test_transforms_zoom_pad_flip_by_label_kind(custom_tasks):
    s = _sample()
    out = scale_crop_flip(s, 2.0, (10, 14), (0, 0), flip=True)  # 8x12 image in a 10x14 crop
    gray = np.full((10, 14), -1.0, np.float32)  # pad: the label's fill
    gray[:8, :12] = _up2(s["gray"]) * 4.0  # zoom 2, scale_power 2
    np.testing.assert_array_equal(out["gray"], gray[:, ::-1])
    flow = np.zeros((10, 14, 2), np.float32)
    flow[:8, :12] = _up2(s["flow"]) * 2.0  # scale_power 1
    flow = flow[:, ::-1] * np.float32([-1.0, 1.0])  # flip_sign
    np.testing.assert_array_equal(out["flow"], flow)
    np.testing.assert_array_equal(out["many"][:8, 2:], _up2(s["many"])[:, ::-1])  # > 255 classes
    assert (out["many"][8:] == 255).all() and out["many"].dtype == np.int64
    # thin binary: the 2-pixel-thick zoomed line is one pixel wide again; 255 stays
    edge = out["fgedge"][:, ::-1]  # unflipped: the zoomed line is rows 2-3, columns 2-9
    zoomed = np.full((10, 14), 255, np.int64)
    zoomed[:8, :12] = _up2(s["fgedge"])
    np.testing.assert_array_equal(edge == 255, zoomed == 255)
    assert ((edge == 1) <= (zoomed == 1)).all()
    per_column = (edge == 1).sum(axis=0)
    assert (per_column <= 1).all() and (per_column[3:9] == 1).all()  # one wide, still a line
    assert 6 <= per_column.sum() <= 8 and (zoomed == 1).sum() == 16
    # no zoom, no thinning: a flip mirrors the label exactly
    same = scale_crop_flip(s, 1.0, (4, 6), (0, 0), flip=True)
    np.testing.assert_array_equal(same["fgedge"], s["fgedge"][:, ::-1])
    np.testing.assert_array_equal(same["gray"], s["gray"][:, ::-1])


def test_to_tensors_use_the_label_kind(custom_tasks):
    out = EvalTransform()(_sample())
    assert out["gray"].shape == (1, 4, 6) and out["gray"].dtype == torch.float32
    assert out["flow"].shape == (2, 4, 6)
    assert torch.equal(out["flow"][1], torch.from_numpy(_sample()["flow"][..., 1]))
    assert out["fgedge"].dtype == torch.int64 and out["fgedge"].shape == (4, 6)


def test_build_metrics_asks_the_spec(custom_tasks):
    ms = build_metrics(["gray", "flow", "many"], 5, Config())
    assert isinstance(ms["gray"], MeanAbs) and ms["gray"].channels == 1
    assert ms["flow"].channels == 2 and ms["flow"].fill == 0.0
    assert isinstance(ms["many"], BinaryAcc)


def _cfg(**eval_kw) -> Config:
    cfg = Config()
    cfg.data.num_classes = 3
    cfg.train.amp, cfg.train.channels_last = "none", False
    for k, v in eval_kw.items():
        setattr(cfg.eval, k, v)
    return cfg


class Custom(nn.Module):
    """gray: ``k * (input width / 12) ** 2`` (what a zoom-power-2 label does); flow: the image's
    horizontal / vertical differences (x odd, y even under a mirror); fgedge: a left-to-right
    logit ramp (not mirror-symmetric)."""

    def forward(self, x):
        pad = F.pad(x[:, :1], (1, 1, 1, 1), mode="replicate")
        dx = (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]) / 2
        dy = (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1]) / 2
        ramp = torch.linspace(-4.0, 2.0, x.shape[-1]).expand(x.shape[0], 1, *x.shape[-2:])
        gray = torch.full_like(x[:, :1], 1.5 * (x.shape[-1] / 12) ** 2)
        return {"gray": gray, "flow": torch.cat([dx, dy], 1), "fgedge": ramp}


def test_views_use_flip_sign_scale_power_and_probabilities(custom_tasks):
    tasks = ["gray", "flow", "fgedge"]
    image = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    plain = predict(Custom(), image, (8, 12), tasks, _cfg())
    tta = predict(Custom(), image, (8, 12), tasks, _cfg(tta=True))
    # flow x is odd under the mirror: equal only if flip_sign is applied to the flipped view
    torch.testing.assert_close(tta["flow"], plain["flow"])
    # binary: sigmoids averaged, then back to logits (not the mean of the logits, -1.0)
    ramp = torch.linspace(-4.0, 2.0, 12)
    expect = ((torch.sigmoid(ramp) + torch.sigmoid(ramp.flip(0))) / 2).logit()
    torch.testing.assert_close(tta["fgedge"][0, 0, 3], expect, atol=1e-4, rtol=1e-4)
    # the image at half the target size: gray = 1.5 * 0.25 comes back times 0.5 ** -2
    small = F.interpolate(image, size=(4, 6), mode="bilinear")
    half = predict(Custom(), small, (8, 12), tasks, _cfg())
    torch.testing.assert_close(half["gray"], torch.full((2, 1, 8, 12), 1.5))
    multi = predict(Custom(), image, (8, 12), tasks, _cfg(scales=[0.5, 1.0, 1.5], tta=True))
    torch.testing.assert_close(multi["gray"], torch.full((2, 1, 8, 12), 1.5))


def test_evaluate_fills_unlabeled_with_the_label_fill_and_collects_spec_predict(custom_tasks):
    tasks = ["gray", "flow", "fgedge"]
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(2, 3, 8, 12, generator=g),
        "gray": torch.full((2, 1, 8, 12), 2.0),
        "flow": torch.randn(2, 2, 8, 12, generator=g),
        "fgedge": torch.zeros(2, 8, 12, dtype=torch.long),
        "has": {t: torch.tensor([True, False]) for t in tasks},
        "meta": {"id": ["a", "b"]},
    }
    batch["gray"][1] = 100.0  # unlabeled: must not count
    batch["fgedge"][:, :, 0] = 255
    samples: list = []
    out = evaluate(Custom(), [batch], tasks, _cfg(tta=True), progress=False, collect=2,
                   samples=samples)  # fmt: skip
    assert out["gray"] == {"mae": pytest.approx(0.5), "count": 96.0}  # |1.5 - 2|, sample 0 only
    # every averaged sigmoid is < 0.5: logits < 0 (probabilities, all > 0, would score 0 %)
    assert out["fgedge"]["acc"] == pytest.approx(100.0)
    pred = samples[0]["pred"]
    assert pred["gray"].shape == (8, 12) and pred["flow"].shape == (8, 12, 2)
    ramp = torch.linspace(-4.0, 2.0, 12)
    mean_sigmoid = (torch.sigmoid(ramp) + torch.sigmoid(ramp.flip(0))) / 2
    torch.testing.assert_close(pred["fgedge"][5], mean_sigmoid, atol=1e-5, rtol=1e-5)
    line = task_summary(out)
    assert "gray mae=0.5" in line and "fgedge acc=100" in line
    panels = prediction_panels(samples, _cfg())
    assert len(panels) == 2 and panels[0].shape == (8, 12 * 4, 3)
    assert (panels[0][:, 12:] == 7).all()  # every task's tile from its spec.colorize


def test_class_count_checked_for_tasks_over_the_dataset_classes(custom_tasks):
    class Wrong(nn.Module):
        def forward(self, x):
            return {"many": torch.zeros(x.shape[0], 5, *x.shape[-2:])}

    batch = {"image": torch.zeros(1, 3, 4, 6), "many": torch.zeros(1, 4, 6, dtype=torch.long)}
    with pytest.raises(ValueError, match="many: the model predicts 5 classes"):
        evaluate(Wrong(), [batch], ["many"], _cfg(), progress=False)


def test_fixed_balancer_weighs_a_registered_task(custom_tasks):
    balancer = build_balancer("fixed", ["gray", "flow"], weights={"gray": 2.0})
    total = balancer({"gray": torch.tensor(3.0), "flow": torch.tensor(5.0)})
    assert float(total) == pytest.approx(2.0 * 3.0 + 5.0)
    with pytest.raises(ValueError, match="unknown tasks"):
        build_balancer("fixed", ["gray"], weights={"grey": 2.0})
