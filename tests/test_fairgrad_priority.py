"""FairGrad's task priorities: weighted alpha-fairness, ``max_d sum_t r_t u(g_t . d)``.

Checked three independent ways: the optimality system ``(G w)_t = (r_t / w_t)^(1/alpha)``; the
identity that scaling task t's gradient by ``c`` is the priority ``c^(1-alpha)``; and the utility
maximised directly by scipy over the unit sphere.
"""

import math

import pytest
import torch
from scipy.optimize import minimize

from cvmtl.balancers import build_balancer
from cvmtl.balancers.gradient.fairgrad import FairGrad
from cvmtl.balancers.solvers import fairgrad_newton


def gradients(t: int, seed: int, dim: int = 30) -> torch.Tensor:
    """Rows with norms over two orders of magnitude and positive pairwise alignment."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(t, dim, generator=gen, dtype=torch.float64) + 0.5
    return g * torch.logspace(-1, 1, t, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_the_weighted_system_holds(alpha):
    for t, seed in ((2, 0), (3, 1), (5, 2)):
        g = gradients(t, seed)
        r = torch.linspace(0.25, 4.0, t, dtype=torch.float64)
        gram = g @ g.T
        w, residual = fairgrad_newton(gram, alpha, 30, r)
        assert float(residual) < 1e-9
        torch.testing.assert_close(gram @ w, (r / w) ** (1 / alpha), rtol=1e-9, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 3.0])
def test_a_priority_is_a_loss_scale_of_power_one_minus_alpha(alpha):
    """Priority r on task t gives the same update as task t's gradient scaled by r^(1/(1-alpha))."""
    g = gradients(3, 4)
    r = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    weighted = FairGrad(["a", "b", "c"], alpha=alpha, priority={"a": 2.0, "c": 0.5})
    update, _ = weighted._combine(g, torch.ones(3, dtype=torch.float64), [0, 1, 2])
    scaled = g * (r ** (1 / (1 - alpha)))[:, None]
    reference, _ = FairGrad(["a", "b", "c"], alpha=alpha)._combine(scaled, torch.ones(3), [0, 1, 2])
    torch.testing.assert_close(update, reference, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_the_update_maximises_the_weighted_utility(alpha):
    g = gradients(3, 5).numpy()
    r = [3.0, 1.0, 1.0]

    def negative_utility(d):
        gains = g @ d
        if (gains <= 0).any():
            return 1e6
        u = [math.log(x) if alpha == 1 else x ** (1 - alpha) / (1 - alpha) for x in gains]
        return -sum(rt * ut for rt, ut in zip(r, u))

    sphere = {"type": "eq", "fun": lambda d: d @ d - 1.0}
    start = g.mean(0) / (g.mean(0) ** 2).sum() ** 0.5
    best = minimize(negative_utility, start, constraints=[sphere], method="SLSQP", tol=1e-12)
    balancer = FairGrad(["a", "b", "c"], alpha=alpha, priority={"a": 3.0})
    update, _ = balancer._combine(torch.from_numpy(g), torch.ones(3), [0, 1, 2])
    direction = update / update.norm()
    torch.testing.assert_close(direction, torch.from_numpy(best.x), rtol=0, atol=1e-4)
    plain, _ = FairGrad(["a", "b", "c"], alpha=alpha)._combine(
        torch.from_numpy(g), torch.ones(3), [0, 1, 2]
    )
    assert float(direction @ torch.from_numpy(g[0])) > float(
        plain @ torch.from_numpy(g[0]) / plain.norm()
    )


def test_unit_priorities_are_the_plain_method():
    g = gradients(3, 6)
    plain, w_plain = FairGrad(["a", "b", "c"], alpha=2.0)._combine(g, torch.ones(3), [0, 1, 2])
    ones = FairGrad(["a", "b", "c"], alpha=2.0, priority={"a": 1.0, "b": 1.0})
    update, w = ones._combine(g, torch.ones(3), [0, 1, 2])
    assert torch.equal(w, w_plain) and torch.equal(update, plain)


def test_a_step_with_some_tasks_absent_uses_their_own_priorities():
    g = gradients(3, 7)
    full = FairGrad(["a", "b", "c"], alpha=3.0, priority={"a": 0.5, "c": 4.0})
    part = FairGrad(["a", "c"], alpha=3.0, priority={"a": 0.5, "c": 4.0})
    gram = g @ g.T
    w_full = full.weights_from_gram(gram[[0, 2]][:, [0, 2]], torch.ones(2), [0, 2])
    w_part = part.weights_from_gram(gram[[0, 2]][:, [0, 2]], torch.ones(2), [0, 1])
    torch.testing.assert_close(w_full, w_part, rtol=0, atol=0)


def test_priorities_from_the_config_keys():
    balancer = build_balancer("fairgrad", ["seg", "depth"], alpha=3.0, priority={"seg": 2})
    assert balancer.priority.tolist() == [2.0, 1.0]
    # a built-in task this run does not train is allowed (one config for every task subset)
    assert FairGrad(["depth"], priority={"seg": 2.0}).priority.tolist() == [1.0]


@pytest.mark.parametrize(
    ("priority", "message"),
    [
        ([2.0], "priority must be a mapping task -> number"),
        ({"sgm": 2.0}, r"priority for unknown tasks \['sgm'\]"),
        ({"seg": 0.0}, r"priority.seg must be in"),
        ({"seg": -1.0}, r"priority.seg must be in"),
        ({"seg": "high"}, "priority.seg must be a number, got 'high'"),
    ],
)
def test_bad_priorities_are_named(priority, message):
    with pytest.raises(ValueError, match=message):
        FairGrad(["seg", "depth"], priority=priority)
