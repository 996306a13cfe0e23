"""fit() end to end on a tiny dataset (CPU), and the optimizer / schedule / EMA helpers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from enginekit import (
    make_tiny_dataset,
    one_thread,  # noqa: F401  (autouse fixture)
    read_jsonl,
    tiny_config,
)
from torch import nn

from cvmtl.config import TrainConfig, load_config, to_dict
from cvmtl.engine.checkpoint import load_checkpoint
from cvmtl.engine.optim import ModelEMA, build_optimizer, lr_factor, param_groups
from cvmtl.engine.trainer import fit

CKPT_KEYS = {
    "cvmtl_checkpoint", "format_version", "model", "optimizer", "scheduler", "scaler",
    "balancer", "rng", "step", "epoch", "position", "best", "config", "bad_steps",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"))


def test_fit_fp32_writes_the_run_folder(tiny_data, tmp_path):
    # 8 train images, batch 4: 2 steps per epoch, 2 epochs, validation after each.
    cfg = tiny_config(tiny_data, tmp_path / "runs", train__epochs=2)
    result = fit(cfg)
    run = tmp_path / "runs" / "tiny"
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run))
    events.Reload()
    assert {"train/loss/seg", "train/lr", "val/seg/miou", "test/seg/miou"} <= set(
        events.Tags()["scalars"]
    )
    assert {"val/pred_0", "val/pred_1"} <= set(events.Tags()["images"])  # train.num_vis=2
    assert to_dict(load_config(run / "config.yaml")) == to_dict(cfg)

    records = read_jsonl(run / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    test = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for key in ("loss/seg", "loss/depth", "loss/normal", "weight/seg", "lr", "img_s"):
        assert math.isfinite(train[0][key]), key
    assert train[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine to 0 at the last step
    assert [r["step"] for r in val] == [2, 4] and "seg/miou" in val[0]
    assert len(test) == 1 and "normal/mean" in test[0]

    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert set(ckpt) >= CKPT_KEYS and "model_raw" not in ckpt
    assert ckpt["step"] == 4 and ckpt["position"] == {"epoch": 2, "batch": 0}
    best = load_checkpoint(run / "best.pt")
    assert best["best"]["metric"] == "seg/miou" and best["best"]["step"] in (2, 4)
    assert result["step"] == 4 and result["interrupted"] is None
    assert set(result["test"]) == {"seg", "depth", "normal"}


def test_fit_bf16_ema_accumulate_uw(tiny_data, tmp_path):
    cfg = tiny_config(
        tiny_data, tmp_path / "runs", train__amp="bf16", train__ema=0.9, train__accumulate=2,
        train__batch_size=2, train__optimizer="sgd", train__scheduler="poly",
        train__warmup_steps=1, train__channels_last="true", loss__balancer="uw",
        train__best_metric="depth/abs_err", train__backbone_lr_mult=0.1,
    )  # fmt: skip
    fit(cfg)
    run = tmp_path / "runs" / "tiny"
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["step"] == 2 and ckpt["ema"]["updates"] == 2
    name = "heads.seg.pred.weight" if "heads.seg.pred.weight" in ckpt["model"] else None
    name = name or next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    assert not torch.equal(ckpt["model"][name], ckpt["model_raw"][name])  # EMA != raw
    groups = {g["name"]: g for g in ckpt["optimizer"]["param_groups"]}
    assert (
        groups["balancer"]["weight_decay"] == 0.0 and groups["backbone_no_wd"]["weight_decay"] == 0
    )
    assert groups["backbone"]["initial_lr"] == pytest.approx(0.1 * groups["rest"]["initial_lr"])
    assert len(ckpt["balancer"]) > 0  # UW's log-variances are saved
    assert load_checkpoint(run / "best.pt")["best"]["metric"] == "depth/abs_err"


def test_fit_fp16_on_cpu(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", train__amp="fp16", train__max_steps=2)
    fit(cfg)
    ckpt = load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")
    assert ckpt["step"] == 2
    assert ckpt["scaler"]["scale"] > 0  # the GradScaler was on and its state saved


def _nan_first_train_batch(monkeypatch):
    """Make sample 'train_000' an all-NaN image (every batch holding it has non-finite losses)."""
    from cvmtl.data.dataset import DenseDataset

    real = DenseDataset.__getitem__

    def getitem(self, item):
        sample = real(self, item)
        index = item[1] if isinstance(item, tuple) else item
        if self.split == "train" and self.ids[index] == "train_000":
            sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample

    monkeypatch.setattr(DenseDataset, "__getitem__", getitem)


def test_nan_batch_skipped_and_logged(tiny_data, tmp_path, monkeypatch, capsys):
    _nan_first_train_batch(monkeypatch)
    cfg = tiny_config(tiny_data, tmp_path / "runs", train__epochs=2)
    result = fit(cfg)
    assert result["skipped_steps"] == 2  # one bad batch per epoch
    skipped = [r for r in read_jsonl(tmp_path / "runs/tiny/metrics.jsonl") if "skipped" in r]
    assert len(skipped) == 2 and "non-finite loss" in skipped[0]["skipped"]
    assert "seg" in skipped[0]["skipped"]  # the task is named
    console = capsys.readouterr()
    assert "skipped (non-finite loss" in console.out + console.err
    ckpt = load_checkpoint(tmp_path / "runs/tiny/last.pt")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_too_many_bad_steps_abort(tiny_data, tmp_path, monkeypatch):
    _nan_first_train_batch(monkeypatch)
    cfg = tiny_config(tiny_data, tmp_path / "runs", train__max_bad_steps=1)
    with pytest.raises(RuntimeError, match="consecutive steps skipped"):
        fit(cfg)


# -- optimizer, schedule, EMA ---------------------------------------------------------------------
class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Conv2d(4, 2, 1)


def test_param_groups():
    net, extra = _Net(), nn.Parameter(torch.zeros(3))
    cfg = TrainConfig(lr=0.1, backbone_lr_mult=0.5, weight_decay=0.01)
    groups = {g["name"]: g for g in param_groups(net, cfg, [extra])}
    assert groups["backbone"]["params"] == [net.backbone[0].weight]
    assert groups["backbone"]["lr"] == 0.05 and groups["backbone"]["weight_decay"] == 0.01
    assert len(groups["backbone_no_wd"]["params"]) == 3  # conv bias, BN weight and bias
    assert groups["backbone_no_wd"]["weight_decay"] == 0.0
    assert groups["rest"]["lr"] == 0.1 and groups["rest_no_wd"]["params"] == [net.head.bias]
    assert groups["balancer"]["params"] == [extra] and groups["balancer"]["weight_decay"] == 0
    net.backbone.requires_grad_(False)
    names = [g["name"] for g in param_groups(net, cfg)]
    assert names == ["rest", "rest_no_wd"]
    assert isinstance(build_optimizer(net, TrainConfig(optimizer="sgd")), torch.optim.SGD)


def test_lr_factor():
    f = lr_factor("cosine", total_steps=10, warmup_steps=2)
    assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0]
    assert f(10) == pytest.approx(0.0, abs=1e-12) and 0 < f(6) < 1
    s = lr_factor("step", total_steps=100)
    assert (s(49), s(50), s(75)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))
    half = lr_factor("step", total_steps=200, step_at=[0.5], step_gamma=0.5)  # StepLR(100, 0.5)
    assert (half(99), half(100), half(199)) == (1.0, 0.5, 0.5)


def test_adam_is_l2_decay_not_decoupled():
    """``train.optimizer=adam`` is torch's Adam (decay added to the gradient), not AdamW."""
    from cvmtl.config import TrainConfig
    from cvmtl.engine.optim import build_optimizer

    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, weight_decay=1e-2)
    opt = build_optimizer(model, cfg)
    assert type(opt) is torch.optim.Adam
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 1e-2}  # bias undecayed
    assert lr_factor("poly", 10)(10) == 0.0 and lr_factor("none", 10, 0)(7) == 1.0
    with pytest.raises(ValueError, match="scheduler"):
        lr_factor("linear", 10)


def test_model_ema():
    net = nn.Linear(2, 1)
    ema = ModelEMA(net, decay=0.5)
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)  # first update: min(0.5, 2 / 11) = 2 / 11
    d = 2 / 11
    torch.testing.assert_close(ema.module.weight, d * start + (1 - d) * net.weight.detach())
    assert not ema.module.weight.requires_grad


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["true", "reduce-overhead"])
def test_fit_compile(tiny_data, tmp_path, mode):
    """Training and validation through compiled parts; reduce-overhead marks each step and
    evaluation batch for CUDA graph trees (on the CPU it compiles like default)."""
    cfg = tiny_config(tiny_data, tmp_path / "runs", train__compile=mode, train__max_steps=2)
    fit(cfg)
    keys = set(load_checkpoint(tmp_path / "runs/tiny/last.pt")["model"])
    assert keys and not any("_orig_mod" in k for k in keys)  # names of the plain model


def test_best_tracker_rules(tmp_path):
    from cvmtl.engine.best import BestTracker

    tasks = ["seg", "depth"]
    res = {"seg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}
    fallback = BestTracker("delta_m", tasks, tmp_path, "val")  # no baselines.json
    assert fallback.metric == "seg/miou" and "baselines.json" in fallback.note
    lower = BestTracker("depth/abs_err", tasks, tmp_path, "val")
    assert lower.update(0.5, 1) and not lower.update(0.6, 2) and lower.update(0.4, 3)
    assert not lower.update(float("nan"), 4) and lower.state_dict()["step"] == 3
    base = {"seg": {"miou": 40.0, "pixel_acc": 60.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}
    (tmp_path / "baselines.json").write_text(json.dumps({"val": base, "test": base}))
    dm = BestTracker("delta_m", tasks, tmp_path, "val")
    assert dm.metric == "delta_m" and not dm.note
    assert dm.value_of(res, dm.delta_m(res)) == pytest.approx(0.0)
    better = {**res, "depth": {"abs_err": 0.25, "rel_err": 0.2}}  # -50% error: +25 for depth
    assert dm.value_of(better, dm.delta_m(better)) == pytest.approx(12.5)
    with pytest.raises(ValueError, match="not trained"):
        BestTracker("normal/mean", tasks, tmp_path, "val")


def test_throughput_leaves_the_warmup_step_out(monkeypatch):
    """img_s of a logging window counts from the end of a process's first step (compilation,
    CUDA graph capture), unless the window holds nothing else. A fake clock: exact values."""
    from cvmtl.engine import logging as run_logging

    now = [100.0]
    monkeypatch.setattr(run_logging.time, "perf_counter", lambda: now[0])
    window = run_logging.LossWindow()
    now[0] += 30.0  # a first step that compiles: 30 s for 8 images
    window.count(8, warmup=True)
    for _ in range(4):  # then 0.5 s per step of 8 images
        now[0] += 0.5
        window.count(8)
    assert window.values([], None, 0.1)["img_s"] == pytest.approx(32 / 2.0)
    alone = run_logging.LossWindow()
    now[0] += 30.0
    alone.count(8, warmup=True)
    assert alone.values([], None, 0.1)["img_s"] == pytest.approx(8 / 30.0)
    plain = run_logging.LossWindow()
    now[0] += 2.0
    plain.count(8)
    assert plain.values([], None, 0.1)["img_s"] == pytest.approx(4.0)
