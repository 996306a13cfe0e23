"""train_step: loss-level and gradient-level paths against plain reference steps (one process)."""

import copy

import pytest
import torch
from tinymtl import TinyMTL, make_batch, split_batch, tiny_cfg

from cvmtl.balancers import build_balancer
from cvmtl.balancers.base import GradientBalancer
from cvmtl.engine.step import train_step
from cvmtl.engine.stepping import SkipReason
from cvmtl.losses import compute_losses

TASKS = ["seg", "depth", "normal"]


class WeightedSum(GradientBalancer):
    """Fixed weights at the gradient level: the update is ``w @ grads``."""

    def __init__(self, tasks, weights=None):
        super().__init__(tasks)
        self.w = torch.tensor(weights or [1.0] * len(self.tasks), dtype=torch.float64)

    def _weights_from_gram(self, gram, losses, active):
        return self.w[active].to(gram)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = TinyMTL(TASKS)
    return model, copy.deepcopy(model)


def _sgd(model, lr=0.1):
    return torch.optim.SGD(model.parameters(), lr=lr)


def _plain_step(model, batch, cfg, weights=None):
    """The reference: one backward of the weighted loss sum, one SGD step."""
    opt = _sgd(model)
    losses = compute_losses(model(batch["image"]), batch, cfg)
    w = weights or {}
    sum(w.get(t, 1.0) * v for t, v in losses.items()).backward()
    opt.step()
    opt.zero_grad()
    return losses


def _assert_same_params(a, b, atol=1e-6):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-5, msg=name)


def test_fixed_equals_plain_loss_sum():
    model, ref = _setup()
    batch, cfg = make_batch(), tiny_cfg()
    bal = build_balancer("fixed", TASKS, weights={"depth": 2.0})
    out = train_step(model, batch, bal, _sgd(model), None, cfg)
    _plain_step(ref, batch, cfg, {"depth": 2.0})
    _assert_same_params(model, ref)
    assert not out.skipped and out.reason is None
    assert set(out.losses) == set(TASKS) and out.weights.tolist() == [1.0, 2.0, 1.0]
    assert not any(v.requires_grad for v in out.losses.values())


@pytest.mark.parametrize("source", ["features", "params"])
def test_gradient_sum_equals_plain_loss_sum(source):
    model, ref = _setup()
    batch, cfg = make_batch(), tiny_cfg(grad_source=source)
    out = train_step(model, batch, WeightedSum(TASKS), _sgd(model), None, cfg)
    _plain_step(ref, batch, cfg)
    _assert_same_params(model, ref)
    assert out.weights.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("source", ["features", "params"])
def test_heads_get_only_their_own_task_gradient(source):
    model, _ = _setup()
    batch, cfg = make_batch(), tiny_cfg(grad_source=source)
    bal = WeightedSum(TASKS, [3.0, 0.5, 2.0])
    train_step(model, batch, bal, _sgd(model), None, cfg, step=False)
    losses = compute_losses(model(batch["image"]), batch, cfg)
    for task in TASKS:
        params = list(model.task_parameters(task))
        expected = torch.autograd.grad(losses[task], params, retain_graph=True)
        for p, g in zip(params, expected):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    # shared parameters: the weighted sum of the task gradients
    shared = list(model.shared_parameters())
    total = sum(w * losses[t] for w, t in zip([3.0, 0.5, 2.0], TASKS))
    for p, g in zip(shared, torch.autograd.grad(total, shared)):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("balancer", ["fixed", "gradient"])
def test_absent_task_is_left_out(balancer):
    model, ref = _setup()
    batch, cfg = make_batch(), tiny_cfg()
    batch["has"]["depth"][:] = False
    bal = build_balancer("fixed", TASKS) if balancer == "fixed" else WeightedSum(TASKS)
    opt = _sgd(model)
    out = train_step(model, batch, bal, opt, None, cfg, step=False)
    assert set(out.losses) == {"seg", "normal"}
    assert out.weights.tolist() == [1.0, 0.0, 1.0]
    assert all(p.grad is None for p in model.task_parameters("depth"))
    opt.step()
    _plain_step(ref, batch, cfg)
    _assert_same_params(model, ref)


@pytest.mark.parametrize("source", ["loss", "features", "params"])
def test_nan_loss_skips_step_and_names_task(source):
    model, ref = _setup()
    batch = make_batch()
    cfg = tiny_cfg(grad_source="params" if source == "params" else "features")
    with torch.no_grad():
        model.heads["normal"][2].bias.fill_(float("nan"))
    ref.load_state_dict(model.state_dict())
    bal = build_balancer("fixed", TASKS) if source == "loss" else WeightedSum(TASKS)
    out = train_step(model, batch, bal, _sgd(model), None, cfg)
    assert out.skip is SkipReason.NON_FINITE_LOSS and out.detail == "normal"
    assert out.reason == "non-finite loss: normal"
    assert torch.equal(model.backbone[0].weight, ref.backbone[0].weight)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("source", ["features", "params"])
def test_nonfinite_task_gradient_skips_and_names_task(source):
    model, ref = _setup()
    model.inject["depth"] = float("inf")
    out = train_step(
        model, make_batch(), WeightedSum(TASKS), _sgd(model), None, tiny_cfg(grad_source=source)
    )
    assert out.skip is SkipReason.NON_FINITE_GRADIENT and out.reason == "non-finite gradient: depth"
    _assert_same_params(model, ref, atol=0)


def test_fp16_scaler_overflow_is_skipped_and_backs_off():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    # unscaling is exact: with a finite step the scaler changes nothing
    model, ref = _setup()
    batch = make_batch()
    for source in ("features", "params"):
        cfg = tiny_cfg(grad_source=source)
        train_step(model, batch, WeightedSum(TASKS), _sgd(model), scaler, cfg)
        _plain_step(ref, batch, cfg)
        _assert_same_params(model, ref, atol=1e-5)
    bal = build_balancer("fixed", TASKS)
    train_step(model, batch, bal, _sgd(model), scaler, tiny_cfg())
    _plain_step(ref, batch, tiny_cfg())
    _assert_same_params(model, ref, atol=1e-5)
    assert scaler.get_scale() == 2.0**10
    # an overflow in the backbone (loss level) and in a per-task gradient (features) skip
    for where, balancer, source in (
        ("backbone", bal, "features"),
        ("seg", WeightedSum(TASKS), "features"),
    ):
        model.inject = {where: float("inf")}
        before = copy.deepcopy(model)
        scale = scaler.get_scale()
        out = train_step(model, batch, balancer, _sgd(model), scaler, tiny_cfg(grad_source=source))
        assert out.skipped, where
        assert scaler.get_scale() == scale / 2
        _assert_same_params(model, before, atol=0)
    assert out.skip is SkipReason.FP16_OVERFLOW
    assert out.reason == "fp16 overflow: non-finite gradient: seg"


def _halves(batch):
    return [split_batch(batch, 2, k) for k in range(2)]


@pytest.mark.parametrize(
    "name,source",
    [("fixed", "loss"), ("uw", "loss"), ("dwa", "loss"), ("rlw", "loss"),
     ("sum", "features"), ("sum", "params")],
)  # fmt: skip
def test_accumulation_equals_one_big_batch(name, source):
    """k micro-batches with uneven valid pixels (and a task missing from one of them) make the
    same update as one batch k times as large: the losses are means over the whole step."""
    batch = make_batch(n=4)
    batch["has"]["depth"] = torch.tensor([True, True, False, False])  # no depth in half 2
    results = []
    for accumulate in (1, 2):
        model, _ = _setup()
        cfg = tiny_cfg(grad_source="params" if source == "params" else "features")
        cfg.train.accumulate = accumulate
        bal = WeightedSum(TASKS, [1.0, 2.0, 0.5]) if name == "sum" else build_balancer(name, TASKS)
        params = list(model.parameters()) + list(bal.parameters())
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for _ in range(2):  # two steps: balancer state (UW's s, RLW's stream) carries over
            out = train_step(
                model, batch if accumulate == 1 else _halves(batch), bal, opt, None, cfg
            )
            assert not out.skipped, out.reason
        results.append((torch.cat([p.detach().reshape(-1) for p in params]), out))
    (big, out_big), (acc, out_acc) = results
    torch.testing.assert_close(acc, big, atol=1e-6, rtol=1e-5)
    for task, value in out_big.losses.items():  # the logged losses are the step's too
        torch.testing.assert_close(out_acc.losses[task], value, atol=1e-6, rtol=1e-5)


def test_soft_sharing_rejects_gradient_balancers():
    model, _ = _setup()
    cfg = tiny_cfg()
    cfg.model.sharing = "soft"
    with pytest.raises(ValueError, match="sharing=soft"):
        train_step(model, make_batch(), WeightedSum(TASKS), _sgd(model), None, cfg)


@pytest.mark.parametrize("name,amp", [("fixed", "bf16"), ("mgda", "none")])
def test_real_resnet18_model_steps(name, amp):
    pytest.importorskip("timm")
    from cvmtl.models.build import build_model

    cfg = tiny_cfg(grad_source="features")
    cfg.model.neck_channels, cfg.model.head_channels = 32, 16
    cfg.train.amp = amp
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = make_batch(n=2, size=64)
    bal = build_balancer(name, TASKS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = train_step(model, batch, bal, torch.optim.SGD(model.parameters(), 0.1), None, cfg)
    assert not out.skipped, out.reason
    assert set(out.losses) == set(TASKS)
    assert all(v.dtype == torch.float32 for v in out.losses.values())
    # timm zero-initialises each residual block's last BN gamma, so the blocks' inner convs get
    # no gradient in the first step; everything else must move.
    still = [n for n, p in model.named_parameters() if torch.equal(before[n], p)]
    assert all(".layer" in n and "bn2" not in n and "downsample" not in n for n in still), still
    assert any(n.startswith("heads.") for n in before) and len(still) < len(before) / 2


def test_famo_post_step_forward_leaves_batchnorm_statistics_alone():
    """FAMO recomputes the losses after the step (train mode, as its official trainer); that
    forward must not update BatchNorm's running statistics a second time."""
    stats = {}
    for name in ("fixed", "famo"):
        torch.manual_seed(0)
        model = TinyMTL(TASKS)
        model.backbone[1] = torch.nn.BatchNorm2d(8)
        bal = build_balancer(name, TASKS)
        out = train_step(model, make_batch(), bal, _sgd(model), None, tiny_cfg())
        assert not out.skipped
        stats[name] = [b.clone() for b in model.backbone[1].buffers()]
    for fixed, famo in zip(stats["fixed"], stats["famo"]):
        torch.testing.assert_close(famo, fixed, rtol=0, atol=0)
