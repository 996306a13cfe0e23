"""Task affinity: hand-checked lookahead and cosines on a linear model, a tiny real model, the
recommendation and the written reports."""

from __future__ import annotations

import itertools
import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from evalkit import make_data, overrides
from torch import nn

from cvmtl.workflows.affinity import (
    AffinityResult,
    compute_affinity,
    partitions,
    recommend,
    stage_parameter_groups,
    write_outputs,
)

REPO = Path(__file__).resolve().parents[1]


class _Shared(nn.Module):
    def __init__(self, d_in: int, d_h: int):
        super().__init__()
        self.linear = nn.Linear(d_in, d_h, bias=False)

    def forward(self, x):
        return [self.linear(x)]


class _PassNeck(nn.Module):
    def forward(self, feats):
        return feats[-1]


class LinearMTL(nn.Module):
    """h = W x shared, task k predicts a_k . h: every gradient has a closed form."""

    size_divisor = 1

    def __init__(self, d_in: int = 5, d_h: int = 4):
        super().__init__()
        self.backbone, self.neck = _Shared(d_in, d_h), _PassNeck()
        self.heads = nn.ModuleDict({t: nn.Linear(d_h, 1, bias=False) for t in ("a", "b")})

    def forward_heads(self, z, size):
        return {t: head(z).squeeze(-1) for t, head in self.heads.items()}

    def forward(self, x):
        return self.forward_heads(self.neck(self.backbone(x)), None)

    def shared_parameters(self):
        return self.backbone.parameters()


def mse(preds, batch):
    return {t: ((preds[t] - batch[t]) ** 2).mean() for t in ("a", "b") if t in batch}


def _linear_setup(n_batches: int = 2, b: int = 6):
    torch.manual_seed(0)
    model = LinearMTL().double()
    g = torch.Generator().manual_seed(1)
    batches = [
        {
            "image": torch.randn(b, 5, generator=g, dtype=torch.float64),
            "a": torch.randn(b, generator=g, dtype=torch.float64),
            "b": torch.randn(b, generator=g, dtype=torch.float64),
        }
        for _ in range(n_batches)
    ]
    return model, batches


def _by_hand(model: LinearMTL, batch: dict, lr: float):
    """numpy: (cosine of dL/dh, cosine of dL/dW, Z[i][j]) for one batch."""
    w = model.backbone.linear.weight.detach().numpy()
    a = {t: model.heads[t].weight.detach().numpy()[0] for t in ("a", "b")}
    x = batch["image"].numpy()
    y = {t: batch[t].numpy() for t in ("a", "b")}
    n = len(x)

    def loss(t, w_):
        return np.mean((x @ w_.T @ a[t] - y[t]) ** 2)

    r = {t: x @ w.T @ a[t] - y[t] for t in ("a", "b")}
    dh = {t: (2 / n) * np.outer(r[t], a[t]) for t in ("a", "b")}  # dL/dh, [n, d_h]
    dw = {t: (2 / n) * np.outer(a[t], x.T @ r[t]) for t in ("a", "b")}  # dL/dW, [d_h, d_in]

    def cos(u, v):
        return float(np.sum(u * v) / np.sqrt(np.sum(u * u) * np.sum(v * v)))

    tasks = ("a", "b")
    cf = [[cos(dh[i], dh[j]) for j in tasks] for i in tasks]
    cp = [[cos(dw[i], dw[j]) for j in tasks] for i in tasks]
    z = [[1 - loss(j, w - lr * dw[i]) / loss(j, w) for j in tasks] for i in tasks]
    return np.array(cf), np.array(cp), np.array(z)


@pytest.mark.parametrize("source", ["features", "params"])
def test_linear_model_matches_hand_computation(source):
    model, batches = _linear_setup()
    lr = 0.3  # large enough that the lookahead moves the losses visibly
    res = compute_affinity(model, batches, mse, ["a", "b"], lr, source=source)
    hand = [_by_hand(model, b, lr) for b in batches]
    cos = np.mean([h[0 if source == "features" else 1] for h in hand], axis=0)
    z = np.mean([h[2] for h in hand], axis=0)
    assert res.batches == 2
    np.testing.assert_allclose(res.lookahead, z, rtol=1e-9, atol=1e-12)
    assert abs(z[0, 1]) > 1e-3  # the check is not vacuous
    for stage in res.stages:
        np.testing.assert_allclose(res.cosine[stage], cos, rtol=1e-9, atol=1e-12)
    expected = ["level0", "neck"] if source == "features" else ["backbone"]  # neck has no params
    assert res.stages == expected


def test_missing_task_is_nan_not_zero():
    model, batches = _linear_setup()
    del batches[1]["b"]  # task b unlabeled in the second batch
    res = compute_affinity(model, batches, mse, ["a", "b"], 0.1)
    only_first = compute_affinity(model, batches[:1], mse, ["a", "b"], 0.1)
    # pairs with b come from batch 1 only; task a alone from both batches
    assert res.lookahead[0][1] == pytest.approx(only_first.lookahead[0][1])
    assert res.lookahead[1][0] == pytest.approx(only_first.lookahead[1][0])
    assert res.lookahead[0][0] != pytest.approx(only_first.lookahead[0][0])
    none = compute_affinity(model, [{k: v for k, v in batches[1].items()}], mse, ["a", "b"], 0.1)
    assert math.isnan(none.lookahead[1][1]) and math.isnan(none.cosine["neck"][0][1])


def test_bad_arguments():
    model, batches = _linear_setup()
    with pytest.raises(ValueError, match="source"):
        compute_affinity(model, batches, mse, ["a", "b"], 0.1, source="grads")
    with pytest.raises(ValueError, match="lookahead_lr"):
        compute_affinity(model, batches, mse, ["a", "b"], 0.0)
    with pytest.raises(ValueError, match="no batch"):
        compute_affinity(model, [], mse, ["a", "b"], 0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """resnet18 + 32-channel FPN on a 4-image 64x64 synthetic dataset, batches of 2."""
    from cvmtl.config import load_config
    from cvmtl.data.loader import build_loaders
    from cvmtl.models.build import build_model

    root = tmp_path_factory.mktemp("affinity") / "data"
    make_data(root, train=4, val=1, test=1)
    over = overrides(root, root.parent / "runs", train__batch_size=2)
    cfg = load_config(REPO / "configs" / "synthetic_demo.yaml", over)
    torch.manual_seed(0)
    model = build_model(cfg)
    batches = list(itertools.islice(build_loaders(cfg, splits=["train"])["train"], 2))
    return cfg, model, batches


def test_tiny_model_shapes_diagonal_and_nothing_changed(tiny, tmp_path):
    from cvmtl.losses import compute_losses

    cfg, model, batches = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    res = compute_affinity(
        model, batches, partial(compute_losses, cfg=cfg), cfg.tasks, cfg.train.lr
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights or BN stats changed"
    assert not model.training  # the caller's mode is restored
    t = len(cfg.tasks)
    assert res.stages == [f"s{s}" for s in model.backbone.strides] + ["neck"]
    for stage in res.stages:
        m = np.array(res.cosine[stage])
        assert m.shape == (t, t)
        np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
        np.testing.assert_allclose(m, m.T, atol=1e-6)
        assert np.all(np.abs(m) <= 1 + 1e-6)
    assert np.array(res.lookahead).shape == (t, t) and np.isfinite(res.lookahead).all()

    paths = write_outputs(res, tmp_path / "aff")
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    data = json.loads(paths["json"].read_text())
    assert data["tasks"] == cfg.tasks and set(data["cosine"]) == set(res.stages)
    assert "group:" in paths["md"].read_text()


def test_parameter_groups_cover_the_trunk(tiny):
    _, model, _ = tiny
    groups = stage_parameter_groups(model)
    assert list(groups) == [f"s{s}" for s in model.backbone.strides] + ["neck"]
    grouped = {id(p) for ps in groups.values() for p in ps}
    assert grouped == {id(p) for p in model.shared_parameters()}
    assert sum(len(ps) for ps in groups.values()) == len(grouped)  # no parameter twice


def test_partitions_are_bell_numbers():
    assert [sum(1 for _ in partitions(list("abcdef")[:n])) for n in range(1, 6)] == [
        1,
        2,
        5,
        15,
        52,
    ]


def _result(cos_by_stage, z) -> AffinityResult:
    tasks = ["seg", "depth", "normal"]
    return AffinityResult(
        tasks=tasks,
        stages=list(cos_by_stage),
        cosine=cos_by_stage,
        grad_norm={s: [1.0] * 3 for s in cos_by_stage},
        lookahead=z,
        batches=1,
        lookahead_lr=0.1,
        source="features",
        mode="train",
    )


def test_recommendation_groups_and_branch_points():
    def sym(sd, sn, dn):
        return [[1, sd, sn], [sd, 1, dn], [sn, dn, 1]]

    cos = {"s4": sym(0.5, 0.4, -0.2), "s8": sym(0.3, 0.3, 0.1), "neck": sym(-0.1, 0.2, 0.1)}
    z = [[0.1, 0.02, -0.03], [0.03, 0.1, -0.01], [-0.02, -0.04, 0.1]]
    rec = recommend(_result(cos, z))
    assert rec["groups"] == [["seg", "depth"], ["normal"]]
    assert rec["mutual"] == [["seg", "depth"]]
    assert rec["branch"] == {"seg-depth": "neck", "seg-normal": None, "depth-normal": "s4"}
    assert any("branch before neck" in line for line in rec["lines"])
    # all affinities positive: one network is best (ties go to fewer groups)
    rec = recommend(_result(cos, [[0.1, 0.01, 0.01]] * 3))
    assert rec["groups"] == [["seg", "depth", "normal"]]
