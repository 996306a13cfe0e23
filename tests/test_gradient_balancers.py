"""Gradient-level balancers against hand-computed values, reference formulas and each other."""

import importlib
import io

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from cvmtl.balancers.gradient._common import random_orders
from cvmtl.balancers.gradient.graddrop import graddrop_uniform
from cvmtl.balancers.gradient.pcgrad import project_conflicts

METHODS = {
    "mgda": ("mgda", "MGDA"),
    "pcgrad": ("pcgrad", "PCGrad"),
    "cagrad": ("cagrad", "CAGrad"),
    "imtl": ("imtl", "IMTL"),
    "nash_mtl": ("nash", "NashMTL"),
    "gradnorm": ("gradnorm", "GradNorm"),
    "graddrop": ("graddrop", "GradDrop"),
    "gradvac": ("gradvac", "GradVac"),
    "aligned_mtl": ("aligned", "AlignedMTL"),
    "db_mtl": ("dbmtl", "DBMTL"),
    "upgrad": ("upgrad", "UPGrad"),
    "dualproj": ("dualproj", "DualProj"),
    "config": ("conflict_free", "ConFIG"),
    "fairgrad": ("fairgrad", "FairGrad"),
    "excessmtl": ("excessmtl", "ExcessMTL"),
    "rgw": ("rgw", "RGW"),
    "moco": ("moco", "MoCo"),
    "modo": ("modo", "MoDo"),
    "sdmgrad": ("sdmgrad", "SDMGrad"),
}
TASKS = ["seg", "depth", "normal"]


def make(name, tasks=TASKS, **hp):
    module, cls = METHODS[name]
    return getattr(importlib.import_module(f"cvmtl.balancers.gradient.{module}"), cls)(tasks, **hp)


def rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# -- hand-computed values ----------------------------------------------------------------------
def test_mgda_two_task_closed_form():
    for seed in range(4):
        g = rand(2, 6, seed=seed)
        a = ((g[1] - g[0]) @ g[1] / (g[0] - g[1]).square().sum()).clamp(0, 1)
        shared, w = make("mgda", ["a", "b"]).combine(g, torch.ones(2))
        torch.testing.assert_close(w, torch.stack([a, 1 - a]), atol=1e-5, rtol=0)
        torch.testing.assert_close(shared, a * g[0] + (1 - a) * g[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["l2", "loss", "loss+"])
def test_mgda_normalized_weights_are_raw_and_sum_to_one(norm):
    g, losses = rand(3, 5, seed=1), torch.tensor([0.5, 2.0, 1.0])
    shared, w = make("mgda", normalization=norm).combine(g, losses)
    n = g.norm(dim=1)
    scale = {"l2": n, "loss": losses, "loss+": losses * n}[norm]
    gn = (g / scale[:, None]).double()
    sol = make("mgda").weights_from_gram(gn @ gn.T, losses)
    ref = sol @ gn.float()  # min-norm point of the normalized gradients: same direction
    torch.testing.assert_close(float(w.sum()), 1.0)
    torch.testing.assert_close(shared / shared.norm(), ref / ref.norm(), atol=1e-5, rtol=0)


def test_pcgrad_known_pair():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    shared, w = make("pcgrad", ["a", "b"]).combine(g, torch.ones(2))
    # g1 - (g1.g2)/|g2|^2 g2 = (.5, .5); g2 - (g2.g1)/|g1|^2 g1 = (0, 1)
    torch.testing.assert_close(shared, torch.tensor([0.5, 1.5]))
    torch.testing.assert_close(w, torch.tensor([2.0, 1.5]))  # (1 + 1) g1 + (0.5 + 1) g2


def test_pcgrad_order_matters_both_orders_by_hand():
    g = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    gram = g @ g.T
    # task 0 then 1, 2: (2,0) -> (2,0) + (2/2)(-1,1) = (1,1) -> (1,1) + 1 (0,-1) = (1,0)
    c = project_conflicts(gram, torch.tensor([[1, 2], [0, 2], [0, 1]]))
    torch.testing.assert_close(c[0] @ g, torch.tensor([1.0, 0.0], dtype=torch.float64))
    # task 0 then 2, 1: (2,0).(0,-1) = 0 keeps (2,0), then (2,0) + (2/2)(-1,1) = (1,1)
    c = project_conflicts(gram, torch.tensor([[2, 1], [0, 2], [0, 1]]))
    torch.testing.assert_close(c[0] @ g, torch.tensor([1.0, 1.0], dtype=torch.float64))


def test_pcgrad_uses_the_seeded_orders():
    g = rand(4, 7, seed=3).double()
    b = make("pcgrad", list("abcd"), seed=5)
    b.combine(g.float(), torch.ones(4))
    w = b.weights_from_gram(g @ g.T, torch.ones(4))  # second step
    ref = project_conflicts(g @ g.T, random_orders(4, 5, 1, torch.device("cpu"))).sum(0)
    torch.testing.assert_close(w, ref.float())


def test_imtl_closed_form_and_impartiality():
    g = rand(2, 5, seed=2).double()
    u = g / g.norm(dim=1, keepdim=True)
    a2 = g[0] @ (u[0] - u[1]) / ((g[0] - g[1]) @ (u[0] - u[1]))
    w = make("imtl", ["a", "b"]).weights_from_gram(g @ g.T, torch.ones(2))
    torch.testing.assert_close(w.double(), torch.stack([1 - a2, a2]), atol=1e-6, rtol=0)
    g = rand(4, 9, seed=3)
    shared, w = make("imtl", list("abcd")).combine(g, torch.ones(4))
    proj = (g / g.norm(dim=1, keepdim=True)) @ shared
    torch.testing.assert_close(proj, proj.mean().expand(4), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(float(w.sum()), 1.0)


def test_cagrad_c0_is_the_mean_and_matches_reference():
    g = rand(3, 8, seed=4)
    shared, _ = make("cagrad", c=0.0).combine(g, torch.ones(3))
    torch.testing.assert_close(shared, g.mean(0), atol=1e-6, rtol=0)
    # the paper code's computation, with scipy's SLSQP
    c, gg = 0.4, (g.double() @ g.double().T).numpy()
    b = np.full(3, 1 / 3)
    k = c * np.sqrt(b @ gg @ b + 1e-8)
    cons = ({"type": "eq", "fun": lambda x: 1 - x.sum()},)
    x = minimize(
        lambda x: x @ gg @ b + k * np.sqrt(x @ gg @ x + 1e-8),
        b,
        bounds=[(0, 1)] * 3,
        constraints=cons,
        options={"ftol": 1e-14},
    ).x
    gw = x @ g.double().numpy()
    ref = (b @ g.double().numpy() + k / (np.linalg.norm(gw) + 1e-8) * gw) / (1 + c**2)
    shared, _ = make("cagrad").combine(g, torch.ones(3))
    np.testing.assert_allclose(shared.numpy(), ref, atol=2e-4)


def test_nash_optimality_condition():
    g = rand(3, 10, seed=5).double()
    gram = g @ g.T
    w = make("nash_mtl", max_norm=0.0).weights_from_gram(gram, torch.ones(3)).double()
    gn = gram / torch.linalg.matrix_norm(gram)
    torch.testing.assert_close(gn @ w, 1 / w, rtol=1e-5, atol=0)
    # max_norm clips ||sum a g|| exactly
    w = make("nash_mtl", max_norm=0.01).weights_from_gram(gram, torch.ones(3)).double()
    assert abs(float(w @ gram @ w) ** 0.5 - 0.01) < 1e-6


def test_nash_failure_is_counted_and_loud():
    g = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # Pareto-stationary: no Nash solution
    b = make("nash_mtl", ["a", "b"], max_norm=0.0)
    shared, w = b.combine(g, torch.ones(2))
    assert torch.isfinite(w).all()
    with pytest.warns(RuntimeWarning, match="did not converge"):
        _ = b.weights
    assert int(b.state_dict()["failures"]) == 1


def test_aligned_mtl_against_numpy_svd():
    g = rand(3, 12, seed=6).double().numpy()
    u, s, vt = np.linalg.svd(g.T, full_matrices=False)  # g^T = U S V^T, D x T
    ref = (s.min() * u @ vt).sum(1)  # aligned system sigma_min U V^T, summed over tasks
    shared, _ = make("aligned_mtl").combine(torch.from_numpy(g).float(), torch.ones(3))
    np.testing.assert_allclose(shared.numpy(), ref, atol=1e-4)


def test_upgrad_against_primal_qp():
    g = rand(3, 5, seed=7).double().numpy()
    g[1] = -0.5 * g[0] + 0.3 * g[1]  # make some pairs conflict
    cons = ({"type": "ineq", "fun": lambda x: g @ x, "jac": lambda x: g},)
    projs = [
        minimize(
            lambda x, i=i: ((x - g[i]) ** 2).sum(),
            g[i],
            constraints=cons,
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        ).x
        for i in range(3)
    ]
    shared, _ = make("upgrad").combine(torch.from_numpy(g).float(), torch.ones(3))
    np.testing.assert_allclose(shared.numpy(), np.mean(projs, 0), atol=1e-5)
    assert np.all(g @ shared.numpy() >= -1e-5)  # no task is hurt


def test_gradvac_ema_over_two_steps():
    beta = 0.3
    b = make("gradvac", ["a", "b"], beta=beta)
    rho = np.zeros((2, 2))
    for step in range(2):
        g = rand(2, 6, seed=10 + step).numpy().astype(np.float64)
        g[1] -= 0.8 * g[0] * (step + 1)  # conflicting
        expect = np.zeros(6)
        for i, j in ((0, 1), (1, 0)):
            pc = g[i].copy()
            phi = pc @ g[j] / (np.linalg.norm(pc) * np.linalg.norm(g[j]))
            t = rho[i, j]
            if phi < t:
                pc += (
                    np.linalg.norm(pc)
                    * (t * np.sqrt(1 - phi**2) - phi * np.sqrt(1 - t**2))
                    / (np.linalg.norm(g[j]) * np.sqrt(1 - t**2))
                    * g[j]
                )
            rho[i, j] = (1 - beta) * t + beta * phi
            expect += pc
        shared, _ = b.combine(torch.from_numpy(g).float(), torch.ones(2))
        np.testing.assert_allclose(shared.numpy(), expect, atol=1e-5)
        np.testing.assert_allclose(b.rho.numpy(), rho, atol=1e-7)
    assert rho[0, 1] != 0 and rho[1, 0] != 0


def test_gradnorm_update_against_formula():
    alpha, lr = 1.5, 0.1
    b = make("gradnorm", alpha=alpha, w_lr=lr)
    w, l0 = np.ones(3), None
    for step in range(3):
        g = rand(3, 8, seed=20 + step).numpy().astype(np.float64)
        losses = np.array([1.0, 2.0, 3.0]) * (0.9 ** (step * np.arange(1, 4)))
        l0 = losses if l0 is None else l0
        shared, used = b.combine(torch.from_numpy(g).float(), torch.from_numpy(losses))
        np.testing.assert_allclose(used.numpy(), w, atol=1e-6)
        np.testing.assert_allclose(shared.numpy(), w @ g, atol=1e-5)
        n = np.linalg.norm(g, axis=1)
        ratio = losses / l0
        target = (w * n).mean() * (ratio / ratio.mean()) ** alpha
        new = np.maximum(w - lr * np.sign(w * n - target) * n, 1e-6)
        w = new * 3 / new.sum()
        np.testing.assert_allclose(b.w.numpy(), w, atol=1e-6)
    assert not np.allclose(w, 1.0)


def test_graddrop_against_numpy():
    leak, seed = 0.2, 3
    b = make("graddrop", leak=leak, seed=seed)
    for step in range(2):
        g = rand(3, 50, seed=30 + step)
        shared, _ = b.combine(g, torch.ones(3))
        u = graddrop_uniform(50, torch.device("cpu"), seed, step).numpy()
        gn = g.numpy()
        p = 0.5 * (1 + gn.sum(0) / (np.abs(gn).sum(0) + 1e-7))
        m = ((p > u) & (gn > 0)) | ((p < u) & (gn < 0))
        np.testing.assert_allclose(shared.numpy(), ((leak + (1 - leak) * m) * gn).sum(0), atol=1e-6)


def test_dbmtl_against_formula():
    beta, sigma = 0.9, 0.5
    b = make("db_mtl", beta=beta, beta_sigma=sigma)
    buf = None
    for k in range(1, 4):
        g = rand(3, 8, seed=40 + k).numpy().astype(np.float64)
        losses = np.array([0.5, 1.0, 4.0]) / k
        logg = g / (losses + 1e-8)[:, None]
        buf = logg if buf is None else logg + beta / k**sigma * (buf - logg)
        n = np.linalg.norm(buf, axis=1)
        expect = (n.max() / (n + 1e-8)) @ buf
        shared, _ = b.combine(torch.from_numpy(g).float(), torch.from_numpy(losses))
        np.testing.assert_allclose(shared.numpy(), expect, rtol=1e-5)
    # beta = 0: no EMA, Gram-based and equal to combine
    b0 = make("db_mtl", beta=0.0)
    assert b0.uses_gram and not b0.needs_raw
    g, losses = rand(3, 8, seed=1), torch.tensor([0.5, 1.0, 4.0])
    shared, w = b0.combine(g, losses)
    torch.testing.assert_close(w @ g, shared)


# -- properties over all methods ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_identical_gradients_give_a_positive_multiple(name):
    g = rand(1, 20, seed=8).expand(3, 20).contiguous()
    shared, w = make(name).combine(g, torch.ones(3))
    scale = float(shared @ g[0] / (g[0] @ g[0]))
    assert scale > 0, name
    torch.testing.assert_close(shared, scale * g[0], atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_weights_from_gram_agrees_with_combine(name):
    b1, b2 = make(name), make(name)
    if not b1.uses_gram:
        with pytest.raises(NotImplementedError):
            b1.weights_from_gram(torch.eye(3), torch.ones(3))
        return
    for step in range(3):  # several steps: stateful methods must stay in lockstep
        g, losses = rand(3, 40, seed=50 + step), torch.rand(3) + 0.5
        shared, w = b1.combine(g, losses)
        w2 = b2.weights_from_gram(g.double() @ g.double().T, losses)
        torch.testing.assert_close(w2, w, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w2 @ g, shared, atol=1e-5, rtol=1e-5)


STATEFUL = ["pcgrad", "gradvac", "graddrop", "gradnorm", "nash_mtl", "db_mtl"]
# their absent-task state is checked with their peers (tests/test_peer_libmtl*.py)
STATEFUL_TOO = ["fairgrad", "excessmtl", "rgw", "moco", "modo", "sdmgrad"]


@pytest.mark.parametrize("name", STATEFUL + STATEFUL_TOO)
def test_state_round_trip(name):
    b1, b2 = make(name), make(name)
    for step in range(2):
        b1.combine(rand(3, 30, seed=60 + step), torch.rand(3) + 0.5)
    buf = io.BytesIO()
    torch.save(b1.state_dict(), buf)
    buf.seek(0)
    b2.load_state_dict(torch.load(buf, weights_only=True))
    g, losses = rand(3, 30, seed=70), torch.rand(3) + 0.5
    s1, w1 = b1.combine(g, losses)
    s2, w2 = b2.combine(g, losses)
    torch.testing.assert_close(s1, s2)
    torch.testing.assert_close(w1, w2)


@pytest.mark.parametrize("name", STATEFUL)
def test_absent_task_state_untouched(name):
    b = make(name)
    b.combine(rand(3, 30, seed=80), torch.rand(3) + 0.5)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    shared, w = b.combine(rand(2, 30, seed=81), torch.rand(2) + 0.5, active=[0, 2])
    assert shared.shape == (30,) and w.shape == (2,)
    assert b.weights["depth"] == 0.0
    after = b.state_dict()
    for key, old in before.items():
        new = after[key]
        if key in ("step", "failures"):
            continue
        if key == "rho":
            torch.testing.assert_close(new[1], old[1])
            torch.testing.assert_close(new[:, 1], old[:, 1])
            assert not torch.equal(new, old)
        else:
            torch.testing.assert_close(new[1], old[1])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_active_subset_runs_for_every_method(name):
    shared, w = make(name).combine(rand(2, 30, seed=90), torch.rand(2) + 0.5, active=[2, 0])
    assert shared.shape == (30,) and torch.isfinite(shared).all() and w.shape == (2,)


def test_active_is_an_argument_not_state():
    """The active set reaches the method as an argument of each call (nothing a caller sets and
    the method reads back); the last call's set is kept for logging only."""
    from cvmtl.balancers.base import GradientBalancer

    seen = []

    class Probe(GradientBalancer):
        def _weights_from_gram(self, gram, losses, active):
            seen.append(list(active))
            return torch.arange(1.0, len(active) + 1, dtype=gram.dtype)

    b = Probe(TASKS)
    g = rand(2, 5, seed=91)
    shared, w = b.combine(g, torch.ones(2), active=[2, 0])
    torch.testing.assert_close(shared, g[0] + 2 * g[1])
    b.weights_from_gram(torch.eye(3, dtype=torch.float64), torch.ones(3))  # default: all tasks
    assert seen == [[2, 0], [0, 1, 2]] and not hasattr(b, "active")
    assert b.weights == {"seg": 1.0, "depth": 2.0, "normal": 3.0}
    b.combine(g, torch.ones(2), active=[2, 0])
    assert b.weights == {"seg": 2.0, "depth": 0.0, "normal": 1.0}  # scattered by the last set
    with pytest.raises(ValueError, match="2 gradient rows for 3 active tasks"):
        b.combine(g, torch.ones(2), active=[0, 1, 2])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_unknown_hparam_is_a_value_error(name):
    with pytest.raises(ValueError, match="bogus"):
        make(name, bogus=1)


@pytest.mark.parametrize(
    "name,hp",
    [
        ("mgda", {"normalization": "max"}),
        ("cagrad", {"c": -1}),
        ("cagrad", {"rescale": 3}),
        ("graddrop", {"leak": 2}),
        ("gradvac", {"beta": 1.5}),
        ("nash_mtl", {"optim_niter": 0}),
        ("db_mtl", {"beta": "x"}),
        ("gradnorm", {"alpha": -1}),
    ],
)
def test_bad_hparam_value_is_a_value_error(name, hp):
    with pytest.raises(ValueError, match=next(iter(hp))):
        make(name, **hp)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_build_balancer_finds_every_method(name):
    from cvmtl.balancers import build_balancer

    b = build_balancer(name, TASKS)
    assert b.kind == "gradient" and b.tasks == TASKS
