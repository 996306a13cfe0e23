"""evaluate() with tiny hand-made models on tiny list-of-dicts loaders."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cvmtl.config import Config
from cvmtl.engine.evaluator import evaluate
from cvmtl.metrics import build_metrics

TASKS = ["seg", "depth", "normal"]
C = 4


def make_cfg(**eval_kw) -> Config:
    cfg = Config()
    cfg.data.num_classes = C
    cfg.train.amp = "none"
    cfg.train.channels_last = False
    for k, v in eval_kw.items():
        setattr(cfg.eval, k, v)
    return cfg


def make_batch(b=2, h=8, w=12, seed=0, image_hw=None):
    g = torch.Generator().manual_seed(seed)
    ih, iw = image_hw or (h, w)
    seg = torch.randint(0, C, (b, h, w), generator=g)
    seg[:, 0, 0] = 255
    depth = 0.5 + 4 * torch.rand(b, 1, h, w, generator=g)
    depth[:, :, 1, :3] = 0
    normal = F.normalize(torch.randn(b, 3, h, w, generator=g), dim=1)
    normal[:, :, 2, :] = 0
    return {
        "image": torch.randn(b, 3, ih, iw, generator=g),
        "seg": seg,
        "depth": depth,
        "normal": normal,
        "has": {t: torch.ones(b, dtype=torch.bool) for t in TASKS},
        "meta": {"id": [f"s{seed}_{i}" for i in range(b)]},
    }


class Replay(nn.Module):
    """Returns the given prediction dicts in order (one per batch)."""

    def __init__(self, preds):
        super().__init__()
        self.preds = preds
        self.calls = 0
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x):
        out = self.preds[self.calls % len(self.preds)]
        self.calls += 1
        return out


class Equivariant(nn.Module):
    """Flip-equivariant per-pixel model; normal x from a centred horizontal difference (odd under
    flip), so flip TTA must give the same predictions as no TTA."""

    def __init__(self, classes=C, tasks=TASKS):
        super().__init__()
        self.seg = nn.Conv2d(3, classes, 1)
        self.tasks = tasks

    def forward(self, x):
        pad = F.pad(x[:, :1], (1, 1, 1, 1), mode="replicate")
        dx = (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]) / 2
        dy = (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1]) / 2
        out = {
            "seg": self.seg(x),
            "depth": 1 + 4 * torch.sigmoid(x.mean(1, keepdim=True)),
            "normal": F.normalize(torch.cat([dx, dy, -torch.ones_like(dx)], 1), dim=1),
        }
        return {t: out[t] for t in self.tasks}


def direct(batches, preds, tasks=TASKS):
    ms = build_metrics(tasks, C, make_cfg())
    for b, p in zip(batches, preds):
        for t in tasks:
            tgt = b[t]
            if not b["has"][t].all():
                keep = b["has"][t]
                tgt = torch.where(
                    keep.view(-1, *[1] * (tgt.dim() - 1)), tgt, 255 if t == "seg" else 0
                )
            ms[t].update(p[t], tgt)
    return {t: ms[t].compute() for t in tasks}


def assert_same(a, b, tol=1e-5):
    for t in b:
        for k, v in b[t].items():
            if k == "iou_per_class":
                assert a[t][k] == pytest.approx(v, abs=tol), (t, k)
            else:
                assert a[t][k] == pytest.approx(v, rel=tol, abs=tol), (t, k)


def test_metrics_equal_metric_classes_and_has_mask():
    batches = [make_batch(2, seed=0), make_batch(3, seed=1)]
    batches[1]["has"]["depth"][1] = False  # its depth target must not count
    g = torch.Generator().manual_seed(5)
    preds = [
        {
            "seg": torch.randn(b["image"].shape[0], C, 8, 12, generator=g),
            "depth": 4 * torch.rand(b["image"].shape[0], 1, 8, 12, generator=g),
            "normal": F.normalize(torch.randn(b["image"].shape[0], 3, 8, 12, generator=g), dim=1),
        }
        for b in batches
    ]
    out = evaluate(Replay(preds), batches, TASKS, make_cfg(), progress=False)
    assert set(out) == set(TASKS)
    assert_same(out, direct(batches, preds))
    # the masked sample really changes the result
    batches[1]["has"]["depth"][1] = True
    assert direct(batches, preds)["depth"]["abs_err"] != pytest.approx(out["depth"]["abs_err"])


def test_flip_tta_equals_plain_for_equivariant_model():
    torch.manual_seed(0)
    model = Equivariant()
    batches = [make_batch(2, seed=3), make_batch(1, seed=4)]
    plain = evaluate(model, batches, TASKS, make_cfg(tta=False), progress=False)
    tta = evaluate(model, batches, TASKS, make_cfg(tta=True), progress=False)
    assert_same(tta, plain, tol=1e-4)


class ScaleAware(nn.Module):
    """Spatially constant outputs; depth = D / s for an input resized by s (the contract's rule)."""

    def __init__(self, width, depth=2.0):
        super().__init__()
        self.width, self.depth = width, depth
        self.out_scale = 1  # output stride relative to the input

    def forward(self, x):
        b, _, h, w = x.shape
        h, w = h // self.out_scale, w // self.out_scale
        s = x.shape[-1] / self.width
        seg = torch.zeros(b, C, h, w)
        seg[:, 1] = 1
        normal = torch.zeros(b, 3, h, w)
        normal[:, 2] = -1
        return {"seg": seg, "depth": torch.full((b, 1, h, w), self.depth / s), "normal": normal}


def test_multiscale_and_half_resolution_depth_scaling():
    batch = make_batch(2, h=8, w=12, seed=6)
    batch["depth"] = torch.where(batch["depth"] > 0, 2.0, 0.0)
    ref = evaluate(ScaleAware(12), [batch], TASKS, make_cfg(), progress=False)
    assert ref["depth"]["abs_err"] == pytest.approx(0.0)
    multi = evaluate(
        ScaleAware(12), [batch], TASKS, make_cfg(scales=[0.5, 1.0, 1.5], tta=True), progress=False
    )
    assert_same(multi, ref)
    # model output at half its input's resolution: upsampled, depth unchanged
    half_out = ScaleAware(12)
    half_out.out_scale = 2
    assert_same(evaluate(half_out, [batch], TASKS, make_cfg(), progress=False), ref)
    # image at half the targets' resolution: the model says D / 0.5, the evaluator multiplies by
    # 0.5 to get back to the targets' scale
    small = dict(batch, image=F.interpolate(batch["image"], size=(4, 6), mode="bilinear"))
    out = evaluate(ScaleAware(12), [small], TASKS, make_cfg(), progress=False)
    assert out["depth"]["abs_err"] == pytest.approx(0.0, abs=1e-6)


def test_training_mode_restored_collect_and_amp():
    model = Equivariant()
    model.train()
    model.seg.eval()  # e.g. a frozen part: must stay in eval afterwards
    batches = [make_batch(3, seed=7)]
    samples = []
    out = evaluate(
        model, batches, TASKS, make_cfg(), amp="bf16", progress=False, collect=2, samples=samples
    )
    assert model.training and not model.seg.training
    assert len(samples) == 2 and samples[1]["meta"]["id"] == "s7_1"
    pred = samples[0]["pred"]  # spec.predict: class ids, depth [H, W] metres, normals [H, W, 3]
    assert pred["seg"].shape == (8, 12) and pred["seg"].dtype == torch.int64
    assert pred["depth"].shape == (8, 12) and pred["normal"].shape == (8, 12, 3)
    plain = evaluate(model, batches, TASKS, make_cfg(), progress=False)
    assert out["depth"]["abs_err"] == pytest.approx(plain["depth"]["abs_err"], rel=0.05)


def test_max_batches():
    model = Equivariant()
    batches = [make_batch(2, seed=8), make_batch(2, seed=9)]
    one = evaluate(model, batches, TASKS, make_cfg(), progress=True, max_batches=1)
    assert_same(one, evaluate(model, batches[:1], TASKS, make_cfg(), progress=False))


def test_clear_errors():
    cfg = make_cfg()
    batch = make_batch(1)
    with pytest.raises(ValueError, match="no data loader"):
        evaluate(Equivariant(), None, TASKS, cfg)
    with pytest.raises(ValueError, match="empty"):
        evaluate(Equivariant(), [], TASKS, cfg)
    with pytest.raises(ValueError, match="missing \\['normal'\\]"):
        evaluate(Equivariant(tasks=["seg", "depth"]), [batch], TASKS, cfg, progress=False)
    with pytest.raises(ValueError, match="predicts 6 classes but the dataset has 4"):
        evaluate(Equivariant(classes=6), [batch], TASKS, cfg, progress=False)
    del batch["normal"]
    with pytest.raises(ValueError, match="no 'normal' labels"):
        evaluate(Equivariant(), [batch], TASKS, cfg, progress=False)
