"""Masked task losses against hand computations and torch references."""

import math

import pytest
import torch
import torch.nn.functional as F
from tinymtl import NUM_CLASSES, make_batch, tiny_cfg

from cvmtl.loss_terms import class_weights
from cvmtl.losses import compute_losses


def _preds(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = batch["image"].shape
    return {
        "seg": torch.randn(n, NUM_CLASSES, h, w, generator=g, requires_grad=True),
        "depth": (torch.rand(n, 1, h, w, generator=g) * 4 + 0.5).requires_grad_(),
        "normal": torch.randn(n, 3, h, w, generator=g, requires_grad=True),
    }


def test_masked_means_match_hand_computation():
    batch = make_batch()
    preds = _preds(batch)
    losses = compute_losses(preds, batch, tiny_cfg())
    seg_ref = F.cross_entropy(preds["seg"], batch["seg"], ignore_index=255)
    valid = batch["depth"] > 0
    depth_ref = (preds["depth"] - batch["depth"]).abs()[valid].mean()
    nvalid = (batch["normal"] != 0).any(1)
    cos = F.cosine_similarity(preds["normal"], batch["normal"], dim=1)
    normal_ref = (1 - cos)[nvalid].mean()
    torch.testing.assert_close(losses["seg"], seg_ref)
    torch.testing.assert_close(losses["depth"], depth_ref)
    torch.testing.assert_close(losses["normal"], normal_ref)
    for v in losses.values():
        assert v.dtype == torch.float32 and v.requires_grad


def test_unlabeled_samples_are_excluded():
    batch = make_batch()
    preds = _preds(batch)
    batch["has"]["depth"] = torch.tensor([True, False, True, False])
    batch["has"]["seg"] = torch.tensor([False, True, True, True])
    losses = compute_losses(preds, batch, tiny_cfg())
    keep = batch["has"]["depth"]
    d, t = preds["depth"][keep], batch["depth"][keep]
    torch.testing.assert_close(losses["depth"], (d - t).abs()[t > 0].mean())
    keep = batch["has"]["seg"]
    ref = F.cross_entropy(preds["seg"][keep], batch["seg"][keep], ignore_index=255)
    torch.testing.assert_close(losses["seg"], ref)
    # gradients of excluded samples are exactly zero
    losses["depth"].backward()
    assert preds["depth"].grad[1].abs().sum() == 0 and preds["depth"].grad[0].abs().sum() > 0


def test_no_valid_pixel_means_no_loss_and_no_nan():
    batch = make_batch()
    preds = _preds(batch)
    batch["depth"].zero_()
    batch["has"]["normal"][:] = False
    preds["depth"].data[0, 0, 0, 0] = float("nan")  # an invalid pixel's NaN does not leak
    losses = compute_losses(preds, batch, tiny_cfg())
    assert set(losses) == {"seg"}
    batch = make_batch()
    preds = _preds(batch)
    preds["depth"].data[batch["depth"] == 0] = float("nan")
    loss = compute_losses(preds, batch, tiny_cfg())["depth"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(preds["depth"].grad).all()


def test_seg_class_weights_and_label_smoothing_match_torch():
    batch = make_batch()
    preds = _preds(batch)
    weights = [0.5, 2.0, 1.0, 3.0]
    cfg = tiny_cfg(seg_class_weights=weights, seg_label_smoothing=0.1)
    loss = compute_losses(preds, batch, cfg)["seg"]
    ref = F.cross_entropy(
        preds["seg"],
        batch["seg"],
        weight=torch.tensor(weights),
        ignore_index=255,
        label_smoothing=0.1,
    )
    torch.testing.assert_close(loss, ref)
    # the weights' tensor is built once per values and device, and other values get their own
    assert class_weights(cfg, torch.device("cpu")) is class_weights(cfg, "cpu")
    other = [2.0, 0.5, 1.0, 1.0]
    loss = compute_losses(preds, batch, tiny_cfg(seg_class_weights=other))["seg"]
    ref = F.cross_entropy(preds["seg"], batch["seg"], weight=torch.tensor(other), ignore_index=255)
    torch.testing.assert_close(loss, ref)
    with pytest.raises(ValueError, match="seg_class_weights"):
        compute_losses(preds, batch, tiny_cfg(seg_class_weights=[1.0, 2.0]))


@pytest.mark.parametrize("kind", ["silog", "berhu", "log_l1"])
def test_depth_variants_match_formulas(kind):
    batch = make_batch()
    preds = _preds(batch)
    loss = compute_losses(preds, batch, tiny_cfg(depth=kind))["depth"]
    valid = batch["depth"] > 0
    p, t = preds["depth"][valid].double(), batch["depth"][valid].double()
    if kind == "silog":
        g = p.log() - t.log()
        ref = (g**2).mean() - 0.85 * g.mean() ** 2
    elif kind == "log_l1":
        ref = (p.log() - t.log()).abs().mean()
    else:
        d = (p - t).abs()
        c = 0.2 * d.max()
        ref = torch.where(d <= c, d, (d**2 + c**2) / (2 * c)).mean()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    if kind == "silog":  # the gradient is that of the formula (S treated as variable)
        (grad,) = torch.autograd.grad(loss, preds["depth"])
        pd = preds["depth"].detach().double().requires_grad_()
        g = pd[valid].log() - batch["depth"][valid].double().log()
        ((g**2).mean() - 0.85 * g.mean() ** 2).backward()
        torch.testing.assert_close(grad.double(), pd.grad, rtol=1e-4, atol=1e-7)


def test_normal_l1_and_autocast_float32():
    batch = make_batch()
    preds = _preds(batch)
    loss = compute_losses(preds, batch, tiny_cfg(normal="l1"))["normal"]
    valid = (batch["normal"] != 0).any(1)
    unit = F.normalize(preds["normal"], dim=1)
    ref = (unit - batch["normal"]).abs().sum(1)[valid].mean()
    torch.testing.assert_close(loss, ref)
    half = {k: v.detach().bfloat16() for k, v in preds.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = compute_losses(half, batch, tiny_cfg())
    assert all(v.dtype == torch.float32 for v in losses.values())
    assert math.isfinite(float(losses["seg"]))


@pytest.mark.slow
@pytest.mark.parametrize("depth_loss", ["l1", "silog", "berhu"])
def test_compiled_loss_terms_equal_eager(depth_loss):
    """train.compile also compiles the per-pixel loss terms: same values, same gradients."""
    batch = make_batch()
    cfg = tiny_cfg()
    cfg.loss.depth = depth_loss
    values, grads = [], []
    for compiled in (False, True):
        preds = _preds(batch)
        losses = compute_losses(preds, batch, cfg, compiled=compiled)
        sum(losses.values()).backward()
        values.append({t: v.detach() for t, v in losses.items()})
        grads.append({t: p.grad for t, p in preds.items()})
    from cvmtl.losses import _compiled_sums

    assert _compiled_sums.cache_info().currsize >= 1  # the compiled terms did run
    assert values[1].keys() == values[0].keys() == {"seg", "depth", "normal"}
    for task in values[0]:
        torch.testing.assert_close(values[1][task], values[0][task], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grads[1][task], grads[0][task], rtol=1e-4, atol=1e-7)
