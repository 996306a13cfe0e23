"""The small torch solvers against closed forms and scipy (scipy only here, never in cvmtl)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from cvmtl.balancers.solvers import (
    _frank_wolfe,
    cagrad_dual,
    min_norm_simplex,
    min_quad_lower,
    nash_newton,
)


def _gram(t: int, d: int, seed: int) -> torch.Tensor:
    g = torch.randn(t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g @ g.T


def _simplex_min(fun, t: int) -> np.ndarray:
    cons = ({"type": "eq", "fun": lambda x: x.sum() - 1},)
    res = minimize(
        fun,
        np.full(t, 1 / t),
        bounds=[(0, 1)] * t,
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
    )
    return res.x


def test_min_norm_two_tasks_closed_form():
    for seed in range(5):
        g = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        a = ((g[1] - g[0]) @ g[1] / (g[0] - g[1]).square().sum()).clamp(0, 1)
        w = min_norm_simplex(g @ g.T)
        torch.testing.assert_close(w, torch.stack([a, 1 - a]), atol=1e-9, rtol=0)


@pytest.mark.parametrize("t,d", [(3, 2), (4, 6), (5, 3)])
def test_min_norm_matches_scipy_and_frank_wolfe(t, d):
    for seed in range(4):
        gram = _gram(t, d, seed)
        w = min_norm_simplex(gram)
        g = gram.numpy()
        ref = _simplex_min(lambda x, g=g: x @ g @ x, t)
        assert float(w @ gram @ w) <= ref @ g @ ref + 1e-9
        fw = _frank_wolfe(gram, 1000)
        assert float(w @ gram @ w) <= float(fw @ gram @ fw) + 1e-9
        assert torch.all(w >= 0) and abs(float(w.sum()) - 1) < 1e-12


@pytest.mark.parametrize("c", [0.1, 0.4, 0.9])
def test_cagrad_dual_matches_scipy(c):
    for seed in range(4):
        gram = _gram(3, 4, seed)
        g = gram.numpy()
        b = np.full(3, 1 / 3)
        k = c * np.sqrt(b @ g @ b)

        def obj(x, g=g, b=b, k=k):
            return x @ g @ b + k * np.sqrt(x @ g @ x + 1e-20)

        w = cagrad_dual(gram, c).numpy()
        assert obj(w) <= obj(_simplex_min(obj, 3)) + 1e-8


def test_min_quad_lower_matches_lbfgsb():
    for seed in range(5):
        t = 2 + seed % 3
        gram = _gram(t, 3, seed)
        lower = (
            torch.rand(t, t, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            - 0.3
        )
        w = min_quad_lower(gram, lower)
        g = gram.numpy()
        for r in range(t):
            lo = lower[r].numpy()
            res = minimize(
                lambda x, g=g: x @ g @ x,
                lo + 1.0,
                jac=lambda x, g=g: 2 * g @ x,
                bounds=[(v, None) for v in lo],
                method="L-BFGS-B",
                options={"ftol": 1e-15, "gtol": 1e-12},
            )
            assert np.all(w[r].numpy() >= lo - 1e-9)
            assert float(w[r] @ gram @ w[r]) <= res.fun + 1e-8


def _badly_scaled(t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Conflicting gradients ``[t, 10]`` with norms spread over 1e-2 .. 1e2, and the scales."""
    j = torch.randn(t, 10, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    j[1] -= 1.5 * j[0]
    d = torch.logspace(-2, 2, t, dtype=torch.float64)
    return j * d[:, None], d


@pytest.mark.parametrize("t", [3, 4, 5])
def test_min_quad_lower_does_not_depend_on_task_scales(t):
    """``argmin_{w >= l} w^T (D G D) w = D^-1 argmin_{v >= D l} v^T G v``: rescaling the tasks
    must not move the answer (a ridge relative to the mean squared norm moved it by 2e-3)."""
    for seed in range(3):
        j, d = _badly_scaled(t, seed)
        lower = torch.eye(t, dtype=torch.float64) / t
        w = min_quad_lower(j @ j.T, lower)
        unit = j / d[:, None]
        ref = min_quad_lower(unit @ unit.T, lower * d) / d
        torch.testing.assert_close(w * d, ref * d, atol=1e-10, rtol=0)


@pytest.mark.parametrize("t", [3, 4, 5])
def test_min_norm_simplex_kkt_on_badly_scaled_gradients(t):
    """The min-norm point ``x = J^T w`` has ``g_i . x >= |x|^2``, with equality on the support
    (relative KKT residual 2e-4 with a ridge relative to the mean squared norm)."""
    for seed in range(3):
        j, _ = _badly_scaled(t, seed)
        w = min_norm_simplex(j @ j.T)
        x = w @ j
        gap = (j @ x - x @ x) / (x @ x)
        assert (gap >= -1e-6).all()
        assert (gap[w > 1e-9].abs() <= 1e-6).all()


def test_nash_newton_solves_the_bargaining_equation():
    for seed in range(5):
        gram = _gram(4, 8, seed)
        gram = gram / torch.linalg.matrix_norm(gram)
        a, res = nash_newton(gram, torch.ones(4, dtype=torch.float64), 20)
        assert float(res) < 1e-10
        torch.testing.assert_close(gram @ a, 1 / a, atol=1e-9, rtol=1e-9)
