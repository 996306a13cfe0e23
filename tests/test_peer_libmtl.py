"""fairgrad, excessmtl, stch and rgw against LibMTL's own implementations (recorded fixtures).

The fixtures are LibMTL's outputs on seeded random cases in float64, written by
``tests/fixtures/peers/make_libmtl_fairgrad_excessmtl_stch_rgw.py`` (its docstring: the peer's
commits and how to rerun it); CI needs no LibMTL. Deterministic methods match to 1e-5; the
stateful ones (ExcessMTL, STCH) step by step over several steps, the random one (RGW) with the same
draws.
"""

import json
import warnings
from pathlib import Path

import pytest
import torch

from cvmtl.balancers import build_balancer
from cvmtl.balancers.gradient.excessmtl import ExcessMTL
from cvmtl.balancers.gradient.fairgrad import FairGrad
from cvmtl.balancers.gradient.rgw import RGW
from cvmtl.balancers.solvers import fairgrad_newton
from cvmtl.balancers.stch import STCH

PEERS = Path(__file__).parent / "fixtures" / "peers"


def fixture(name: str) -> list[dict]:
    return json.loads((PEERS / f"libmtl_{name}.json").read_text())["cases"]


def tensor(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def names(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def ids(cases: list[dict]) -> list[str]:
    return [c["name"] for c in cases]


# -- FairGrad ----------------------------------------------------------------------------------
FAIRGRAD = fixture("fairgrad")
SOLVED = [c for c in FAIRGRAD if c["peer_solved"]]


@pytest.mark.parametrize("case", SOLVED, ids=ids(SOLVED))
def test_fairgrad_matches_libmtl(case):
    """The same weights as LibMTL's least_squares (to its own accuracy, ~1e-7) and update."""
    g = tensor(case["G"])
    balancer = FairGrad(names(g.shape[0]), alpha=case["alpha"])
    update, weights = balancer._combine(g, torch.ones(g.shape[0], dtype=torch.float64), [])
    torch.testing.assert_close(weights, tensor(case["weights"]), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(update, tensor(case["update"]), rtol=1e-5, atol=1e-8)
    assert balancer.check() == 0


def test_fairgrad_solves_where_libmtl_stops_early():
    """A positive-definite Gram matrix on which scipy's least_squares stops at residual 0.37:
    the system has its (unique) solution, which ours reaches."""
    (case,) = [c for c in FAIRGRAD if not c["peer_solved"]]
    g = tensor(case["G"])
    gram = g @ g.T
    w, residual = fairgrad_newton(gram, case["alpha"], 30)
    assert float(residual) < 1e-10 < case["residual"]
    torch.testing.assert_close(gram @ w, w ** (-1 / case["alpha"]), rtol=1e-9, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_solves_the_system_over_scales(alpha):
    """Gradient norms over four orders of magnitude: the system holds to 1e-9 in 30 Newton
    iterations (alpha = 1: Nash-MTL's G w = 1/w)."""
    gen = torch.Generator().manual_seed(3)
    for t in (2, 3, 5, 8):
        g = torch.randn(t, 40, generator=gen, dtype=torch.float64)
        g = g * torch.logspace(-2, 2, t, dtype=torch.float64)[:, None]
        balancer = FairGrad(names(t), alpha=alpha)
        gram = g @ g.T
        w = balancer._weights_from_gram(gram, torch.ones(t, dtype=gram.dtype), list(range(t)))
        torch.testing.assert_close(
            gram @ w * w ** (1 / alpha), torch.ones_like(w), rtol=0, atol=1e-9
        )
        assert balancer.check() == 0


def test_fairgrad_counts_and_reports_failures():
    """Pareto-stationary gradients (g, -g) have no solution: counted, warned once, lazily."""
    g = torch.randn(1, 5, dtype=torch.float64)
    balancer = FairGrad(["a", "b"])
    w = balancer.weights_from_gram(torch.cat([g, -g]) @ torch.cat([g, -g]).T, torch.ones(2))
    assert torch.isfinite(w).all() and (w > 0).all()
    with pytest.warns(RuntimeWarning, match="fairgrad: 1 solve"):
        balancer.weights  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert balancer.check() == 1  # reported once
    restored = FairGrad(["a", "b"])
    restored.load_state_dict(balancer.state_dict())
    assert restored.check() == 1


# -- ExcessMTL ---------------------------------------------------------------------------------
EXCESS = fixture("excessmtl")


@pytest.mark.parametrize("case", EXCESS, ids=ids(EXCESS))
def test_excessmtl_matches_libmtl_step_by_step(case):
    """Weights and updates over consecutive steps; half way the state goes through a state dict
    into a fresh balancer, which continues the same."""
    t = len(case["steps"][0]["G"])
    balancer = ExcessMTL(names(t), robust_step_size=case["robust_step_size"])
    for k, step in enumerate(case["steps"]):
        if k == 2:
            state = balancer.state_dict()
            balancer = ExcessMTL(names(t), robust_step_size=case["robust_step_size"])
            balancer.load_state_dict(state)
        g = tensor(step["G"])
        update, weights = balancer._combine(g, torch.ones(t, dtype=torch.float64), list(range(t)))
        torch.testing.assert_close(weights, tensor(step["weights"]), rtol=1e-5, atol=1e-10)
        torch.testing.assert_close(update, tensor(step["update"]), rtol=1e-5, atol=1e-10)


def test_excessmtl_absent_task_keeps_its_state():
    """A task missing from a step keeps its weight and accumulator; the present ones keep their
    weights' sum; a task's first step only records its scale."""
    gen = torch.Generator().manual_seed(0)
    balancer = build_balancer("excessmtl", ["a", "b", "c"], robust_step_size=0.5)
    for _ in range(2):
        balancer.combine(torch.randn(2, 6, generator=gen), torch.ones(2), active=[0, 2])
    acc_b = balancer.grad_sq_sum[1].clone()
    assert torch.equal(acc_b, torch.zeros(6)) and not balancer.seen[1]
    lw = balancer.loss_weight.clone()
    assert float(lw[0] + lw[2]) == pytest.approx(2.0) and float(lw[1]) == 1.0
    _, w = balancer.combine(torch.randn(3, 6, generator=gen), torch.ones(3))
    assert balancer.seen.all()
    assert float(w.sum()) == pytest.approx(3.0)
    _, w = balancer.combine(torch.randn(1, 6, generator=gen), torch.ones(1), active=[1])
    assert float(w[0]) == pytest.approx(float(balancer.loss_weight[1]))


def test_excessmtl_hyper_parameters():
    with pytest.raises(ValueError, match="robust_step_size"):
        build_balancer("excessmtl", ["a", "b"], robust_step_size=-1)
    with pytest.raises(ValueError, match="step_size"):
        build_balancer("excessmtl", ["a", "b"], step_size=0.1)


# -- STCH --------------------------------------------------------------------------------------
STCH_CASES = fixture("stch")


@pytest.mark.parametrize("case", STCH_CASES, ids=ids(STCH_CASES))
def test_stch_matches_libmtl_step_by_step(case):
    """Through warm-up, the nadir epoch and the smooth Tchebycheff phase: the gradient w.r.t.
    the losses is LibMTL's; the value is LibMTL's plus the constant it drops (T max f); the
    logged weights are that gradient. A state dict taken after the nadir epoch resumes it."""
    t = len(case["steps"][0]["losses"])
    tasks = names(t)
    make = lambda: STCH(tasks, mu=case["mu"], warmup_epoch=case["warmup_epoch"])  # noqa: E731
    balancer, epoch = make(), 0
    for step in case["steps"]:
        while epoch < step["epoch"]:
            balancer.epoch_end()
            epoch += 1
            if epoch == case["warmup_epoch"] + 1:
                state = balancer.state_dict()
                balancer = make()
                balancer.load_state_dict(state)
        values = tensor(step["losses"]).requires_grad_()
        total = balancer(dict(zip(tasks, values)))
        total.backward()
        torch.testing.assert_close(values.grad, tensor(step["grad"]), rtol=1e-5, atol=1e-12)
        shift = 0.0
        if epoch > case["warmup_epoch"]:
            nadir = balancer.nadir
            shift = t * float(torch.log(values.detach() / nadir + 1e-20).max())
        assert float(total.detach()) - shift == pytest.approx(step["value"], rel=1e-9, abs=1e-9)
        weights = torch.tensor([balancer.weights[k] for k in tasks], dtype=torch.float64)
        torch.testing.assert_close(weights, values.grad, rtol=1e-6, atol=0)
        balancer.after_step({k: v.detach() for k, v in zip(tasks, values)})


def test_stch_partial_tasks_and_hyper_parameters():
    """Absent tasks: the total is over the present ones (times their number); the nadir of a task
    never seen in the nadir epoch is 1."""
    balancer = build_balancer("stch", ["a", "b", "c"], mu=0.5, warmup_epoch=0)
    balancer({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    balancer.after_step({"a": torch.tensor(2.0), "b": torch.tensor(4.0)})
    balancer.epoch_end()
    assert balancer.nadir.tolist() == [2.0, 4.0, 1.0]
    losses = {"a": torch.tensor(1.0), "c": torch.tensor(3.0)}
    f = torch.log(torch.tensor([1.0 / 2.0, 3.0]))
    expected = 2 * 0.5 * torch.logsumexp(f / 0.5, 0)
    assert float(balancer(losses)) == pytest.approx(float(expected), rel=1e-6)
    assert balancer.weights["b"] == 0.0
    for bad in ({"mu": 0}, {"mu": -1.0}, {"warmup_epoch": -1}, {"warmup_epoch": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            build_balancer("stch", ["a", "b"], **bad)


# -- RGW ---------------------------------------------------------------------------------------
RGW_CASES = fixture("rgw")


@pytest.mark.parametrize("case", RGW_CASES, ids=ids(RGW_CASES))
def test_rgw_matches_libmtl_with_the_same_draws(case):
    """Seeded with LibMTL's torch.manual_seed, our generator draws its normals; the weights
    (softmax of the draws) and the updates are LibMTL's, step by step, across a state dict."""
    t = len(case["steps"][0]["G"])
    balancer = RGW(names(t), seed=case["seed"])
    for k, step in enumerate(case["steps"]):
        if k == 2:
            state = balancer.state_dict()
            balancer = RGW(names(t), seed=case["seed"] + 1)
            balancer.load_state_dict(state)
        draws = tensor(step["draws"])
        g = tensor(step["G"])
        update, weights = balancer._combine(g, torch.ones(t, dtype=torch.float64), list(range(t)))
        torch.testing.assert_close(weights, torch.softmax(draws, 0), rtol=1e-12, atol=0)
        torch.testing.assert_close(weights, tensor(step["weights"]), rtol=1e-10, atol=0)
        torch.testing.assert_close(update, tensor(step["update"]), rtol=1e-10, atol=1e-12)


def test_rgw_gram_path_and_partial_tasks():
    """The Gram path draws the same weights as the raw path; absent tasks drop out of the softmax
    and still consume their draw."""
    g = torch.randn(3, 7)
    a, b = (
        build_balancer("rgw", ["x", "y", "z"], seed=4),
        build_balancer("rgw", ["x", "y", "z"], seed=4),
    )
    for _ in range(3):
        update, w = a.combine(g, torch.ones(3))
        wg = b.weights_from_gram((g @ g.T).double(), torch.ones(3))
        torch.testing.assert_close(w, wg)
        torch.testing.assert_close(update, wg @ g)
    gen = torch.Generator().manual_seed(9)
    z = torch.randn(3, generator=gen, dtype=torch.float64)
    z = torch.randn(3, generator=gen, dtype=torch.float64)  # the second step's draw
    c = build_balancer("rgw", ["x", "y", "z"], seed=9)
    c.combine(g, torch.ones(3))
    _, w = c.combine(g[[0, 2]], torch.ones(2), active=[0, 2])
    torch.testing.assert_close(w, torch.softmax(z[[0, 2]], 0).float())
    with pytest.raises(ValueError, match="sed"):
        build_balancer("rgw", ["x", "y"], sed=1)
