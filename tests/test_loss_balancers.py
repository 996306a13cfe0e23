"""Loss-level balancers and build_balancer."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from cvmtl.balancers import BALANCERS, build_balancer

TASKS = ["seg", "depth", "normal"]


def _losses(*values, requires_grad=False):
    return {t: torch.tensor(v, requires_grad=requires_grad) for t, v in zip(TASKS, values)}


def _roundtrip(balancer, name, **hparams):
    buf = io.BytesIO()
    torch.save(balancer.state_dict(), buf)
    buf.seek(0)
    other = build_balancer(name, TASKS, **hparams)
    other.load_state_dict(torch.load(buf, weights_only=True))
    return other


def test_build_balancer_errors_and_kinds():
    with pytest.raises(ValueError, match="available: .*famo"):
        build_balancer("nope", TASKS)
    with pytest.raises(ValueError, match="accepted: temperature"):
        build_balancer("dwa", TASKS, temp=2)
    for name in ("fixed", "uw", "dwa", "rlw", "gls", "famo"):
        assert build_balancer(name, TASKS).kind == "loss"
    assert {"mgda", "pcgrad", "upgrad", "nash_mtl"} <= set(BALANCERS)


def test_fixed_weights():
    b = build_balancer("fixed", TASKS, weights={"depth": 2.0})
    total = b(_losses(1.0, 2.0, 3.0))
    assert float(total.detach()) == pytest.approx(1 + 4 + 3)
    assert b.weights == {"seg": 1.0, "depth": 2.0, "normal": 1.0}
    # an absent task is left out and weighs 0 in the log
    total = b({"seg": torch.tensor(1.0), "normal": torch.tensor(3.0)})
    assert float(total.detach()) == pytest.approx(4.0) and b.weights["depth"] == 0.0
    with pytest.raises(ValueError, match="unknown tasks"):
        build_balancer("fixed", TASKS, weights={"edges": 1.0})
    # a known task this run does not train: its weight is unused (one config, any task subset)
    b = build_balancer("fixed", ["seg"], weights={"normal": 3.0})
    assert float(b({"seg": torch.tensor(2.0)}).detach()) == pytest.approx(2.0)


def test_uw_value_and_analytic_gradient():
    b = build_balancer("uw", TASKS)
    with torch.no_grad():
        for t, s in zip(TASKS, (0.3, -0.2, 0.0)):
            b.log_vars[t].fill_(s)
    losses = _losses(1.5, 0.5, 2.0)
    total = b(losses)
    total.backward()
    expected = sum(math.exp(-s) * v + s for s, v in zip((0.3, -0.2, 0.0), (1.5, 0.5, 2.0)))
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    for t, s, v in zip(TASKS, (0.3, -0.2, 0.0), (1.5, 0.5, 2.0)):
        assert float(b.log_vars[t].grad) == pytest.approx(1 - math.exp(-s) * v, rel=1e-6)
    b.zero_grad(set_to_none=True)
    b({"seg": torch.tensor(1.0)}).backward()
    assert b.log_vars["depth"].grad is None  # absent: the optimizer leaves it alone
    other = _roundtrip(b, "uw")
    assert float(other.log_vars["seg"].detach()) == pytest.approx(0.3)


def test_dwa_weights_from_history():
    b = build_balancer("dwa", TASKS, temperature=2.0)
    history = [(1.0, 2.0, 3.0), (0.5, 2.0, 1.5)]  # epoch 0 (two steps each), epoch 1
    for epoch in history:
        assert b.task_weights().tolist() == [1.0, 1.0, 1.0]  # first two epochs: equal
        for scale in (0.9, 1.1):
            b.after_step(_losses(*(scale * v for v in epoch)))
        b.epoch_end()
    r = torch.tensor([0.5 / 1.0, 2.0 / 2.0, 1.5 / 3.0], dtype=torch.float64)
    expected = 3 * F.softmax(r / 2.0, dim=0)
    torch.testing.assert_close(b.task_weights().double(), expected, rtol=1e-6, atol=1e-7)
    total = b(_losses(1.0, 1.0, 1.0))
    assert float(total.detach()) == pytest.approx(3.0, rel=1e-6)  # weights sum to T
    other = _roundtrip(b, "dwa")
    torch.testing.assert_close(other.task_weights(), b.task_weights())


def test_rlw_scale_and_reproducibility():
    a, b = build_balancer("rlw", TASKS), build_balancer("rlw", TASKS)
    losses = _losses(1.0, 1.0, 1.0)
    for _ in range(3):
        ta, _ = a(losses), b(losses)
        assert float(ta) == pytest.approx(1.0, rel=1e-6)  # softmax weights sum to 1
        assert a.weights == b.weights
    resumed = _roundtrip(a, "rlw")
    a(losses)
    resumed(losses)
    assert resumed.weights == a.weights
    assert build_balancer("rlw", TASKS, seed=1)(losses) is not None


def test_gls_value_and_weights():
    b = build_balancer("gls", TASKS)
    losses = _losses(1.0, 2.0, 4.0, requires_grad=True)
    total = b(losses)
    assert float(total.detach()) == pytest.approx(2.0, rel=1e-6)  # (1 * 2 * 4) ** (1/3)
    total.backward()
    for t, v in zip(TASKS, (1.0, 2.0, 4.0)):
        assert float(losses[t].grad) == pytest.approx(2.0 / (3 * v), rel=1e-5)
        assert b.weights[t] == pytest.approx(2.0 / (3 * v), rel=1e-5)


def test_famo_matches_reference_update():
    gamma, w_lr, eps = 0.01, 0.025, 1e-8
    b = build_balancer("famo", TASKS, gamma=gamma, w_lr=w_lr)
    w = torch.zeros(3, requires_grad=True)  # the official implementation, written out
    opt = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
    before = [(1.0, 2.0, 0.5), (0.9, 1.5, 0.6), (0.8, 1.4, 0.4)]
    after = [(0.9, 1.5, 0.6), (0.8, 1.4, 0.4), (0.85, 1.0, 0.3)]
    for prev, new in zip(before, after):
        losses = _losses(*prev, requires_grad=True)
        total = b(losses)
        z = F.softmax(w.detach(), -1)
        d = torch.tensor(prev) + eps
        c = (z / d).sum()
        assert float(total.detach()) == pytest.approx(float((d.log() * z / c).sum()), rel=1e-5)
        total.backward()
        for i, t in enumerate(TASKS):  # effective weights z / (c D) sum to 1
            assert float(losses[t].grad) == pytest.approx(float(z[i] / (c * d[i])), rel=1e-5)
        b.after_step(_losses(*new))
        delta = (torch.tensor(prev) + eps).log() - (torch.tensor(new) + eps).log()
        (g,) = torch.autograd.grad(F.softmax(w, -1), w, grad_outputs=delta)
        opt.zero_grad()
        w.grad = g
        opt.step()
        torch.testing.assert_close(b.xi, w.detach(), rtol=1e-5, atol=1e-7)
    # an absent task's logit and Adam state stay untouched
    xi = b.xi.clone()
    b({"seg": torch.tensor(1.0), "normal": torch.tensor(1.0)})
    b.after_step({"seg": torch.tensor(0.5), "normal": torch.tensor(1.2)})
    assert b.xi[1] == xi[1] and b.steps.tolist() == [4.0, 3.0, 4.0]
    other = _roundtrip(b, "famo")
    torch.testing.assert_close(other.xi, b.xi)
