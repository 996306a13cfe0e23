"""MoCo, MoDo and SDMGrad step by step against LibMTL's own implementation, plus their contract.

The fixtures ``tests/fixtures/peers/{moco,modo,sdmgrad}_libmtl.json`` hold LibMTL's outputs
(median-research-group/LibMTL@4336804, float64) on seeded random gradients over several
consecutive steps; ``tests/fixtures/peers/moco_modo_sdmgrad_libmtl.py`` made them and says how to
rerun it. Each case replays the same gradients and losses through our class, carrying our own
state from step to step, and compares every step's update and state to 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tinymtl import tiny_cfg

from cvmtl.balancers import build_balancer
from cvmtl.balancers.gradient._common import simplex_merge, simplex_part
from cvmtl.balancers.gradient.moco import MoCo
from cvmtl.balancers.gradient.modo import MoDo, modo_weights
from cvmtl.balancers.gradient.sdmgrad import SDMGrad, sdmgrad_simplex_weights
from cvmtl.balancers.machinery import check_balancer
from cvmtl.balancers.solvers import project_simplex

PEERS = Path(__file__).parent / "fixtures" / "peers"
NAMES = ["moco", "modo", "sdmgrad"]
TASKS = ["seg", "depth", "normal"]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def load(method: str, sampling: str | None = None) -> list[dict]:
    """The recorded cases (MoDo / SDMGrad: only those of ``sampling`` if given)."""
    doc = json.loads((PEERS / f"{method}_libmtl.json").read_text())
    assert doc["peer"] == "median-research-group/LibMTL@4336804847eaa5e0b924b743d76beec7ac3fdc97"
    return [c for c in doc["cases"] if sampling is None or c["sampling"] == sampling]


def cases(method: str, sampling: str | None = None) -> list:
    return [pytest.param(c, id=c["name"]) for c in load(method, sampling)]


def t64(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def names(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- against the peer, step by step ---------------------------------------------------------------
@pytest.mark.parametrize("case", cases("moco"))
def test_moco_matches_libmtl_step_by_step(case):
    b = MoCo(names(case["tasks"]), **case["hparams"])
    kw = case["peer_kwargs"]
    n = case["tasks"]
    y_prev = torch.zeros(n, len(case["steps"][0]["grads"][0]), dtype=torch.float64)
    for k, step in enumerate(case["steps"]):
        g, losses = t64(step["grads"]), t64(step["losses"])
        update, weights = b._combine(g, losses, list(range(n)))  # float64; combine(): float32
        msg = f"step {k}"
        torch.testing.assert_close(update, t64(step["update"]), **TOL, msg=msg)
        torch.testing.assert_close(b.lambd, t64(step["lambd"]), **TOL, msg=msg)
        torch.testing.assert_close(b.y, t64(step["y"]), **TOL, msg=msg)
        # the weights are those of this step's raw gradients; the rest is the trackers' past
        beta_k = kw["MoCo_beta"] / (k + 1) ** kw["MoCo_beta_sigma"]
        past = b.lambd @ ((1 - beta_k) * y_prev)
        torch.testing.assert_close(update - weights @ g, past, **TOL, msg=msg)
        y_prev = b.y.clone()


@pytest.mark.parametrize("case", cases("modo") + cases("sdmgrad"))
def test_double_sampling_rule_matches_libmtl(case):
    """The weight rule given the cross matrix ``G_1 G_2^T`` of two samples and the update from
    a third: with independent samples (LibMTL's setting) and one sample three times (ours)."""
    modo = "MoDo_gamma" in case["peer_kwargs"]
    hp = {k.split("_", 1)[1]: v for k, v in case["peer_kwargs"].items()}
    n = case["tasks"]
    state = torch.full((n,), 1.0 / n, dtype=torch.float64)
    for k, step in enumerate(case["steps"]):
        g = t64(step["grads"])
        samples = (g, g, g) if case["sampling"] == "one" else g
        if modo:  # LibMTL's MoDo: lambda from samples 0 and 1, the update from sample 2
            state = modo_weights(samples[0] @ samples[1].T, state, hp["gamma"], hp["rho"])
            update, expected = state @ samples[2], step["lambd"]
        else:  # LibMTL's SDMGrad: the update from sample 0 (zeta), w from 1 and 2 (xi, xi')
            cross = samples[1] @ samples[2].T
            state = sdmgrad_simplex_weights(cross, state, hp["lamda"], hp["niter"])
            weights = (state + hp["lamda"] / n) / (1 + hp["lamda"])
            update, expected = weights @ samples[0], step["w"]
        torch.testing.assert_close(state, t64(expected), **TOL, msg=f"step {k}")
        torch.testing.assert_close(update, t64(step["update"]), **TOL, msg=f"step {k}")


@pytest.mark.parametrize(
    ("cls", "case"),
    [pytest.param(MoDo, c, id=f"modo {c['name']}") for c in load("modo", "one")]
    + [pytest.param(SDMGrad, c, id=f"sdmgrad {c['name']}") for c in load("sdmgrad", "one")],
)
def test_one_batch_class_matches_libmtl_fed_one_sample(cls, case):
    """The balancer on one batch per step equals LibMTL fed that batch as all three samples."""
    b = cls(names(case["tasks"]), **case["hparams"])
    state = "lambd" if cls is MoDo else "w"
    for k, step in enumerate(case["steps"]):
        g, losses = t64(step["grads"]), t64(step["losses"])
        update, _ = b._combine(g, losses, list(range(case["tasks"])))
        torch.testing.assert_close(update, t64(step["update"]), **TOL, msg=f"step {k}")
        torch.testing.assert_close(getattr(b, state), t64(step[state]), **TOL, msg=f"step {k}")


@pytest.mark.parametrize("method", NAMES)
def test_public_float32_path_follows_the_peer(method):
    """``combine`` (float32, what training runs) stays with the float64 peer over the steps."""
    case = load(method, None if method == "moco" else "one")[-1]  # non-default hparams
    b = build_balancer(method, names(case["tasks"]), **case["hparams"])
    for step in case["steps"]:
        update, _ = b.combine(t64(step["grads"]).float(), t64(step["losses"]).float())
        ref = t64(step["update"]).float()
        torch.testing.assert_close(update, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)


# -- the pieces ----------------------------------------------------------------------------------
def test_project_simplex_against_bisection():
    for seed in range(20):
        v = rand(1 + seed % 6, seed=seed).double() * (1 + seed)
        lo, hi = float(v.min()) - 1, float(v.max())
        for _ in range(200):  # sum(max(v - theta, 0)) = 1 by bisection on theta
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if (v - mid).clamp_min(0).sum() > 1 else (lo, mid)
        torch.testing.assert_close(project_simplex(v), (v - lo).clamp_min(0), atol=1e-12, rtol=0)
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    torch.testing.assert_close(project_simplex(p), p)  # a point of the simplex stays


def test_subset_of_a_simplex_state():
    """Present tasks read their entries rescaled onto their simplex and write them back at their
    old mass (absent entries untouched); with no mass they read uniform and write at full scale."""
    full, idx = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([2, 0])
    part, mass = simplex_part(full, idx)
    torch.testing.assert_close(part, torch.tensor([0.6, 0.4]))
    merged = simplex_merge(full, idx, torch.tensor([0.1, 0.9]), mass)
    torch.testing.assert_close(merged, torch.tensor([0.45, 0.5, 0.05]))
    full = torch.tensor([0.0, 1.0, 0.0])
    part, mass = simplex_part(full, idx)
    torch.testing.assert_close(part, torch.tensor([0.5, 0.5]))
    merged = simplex_merge(full, idx, torch.tensor([0.1, 0.9]), mass)
    torch.testing.assert_close(merged, torch.tensor([0.9, 1.0, 0.1]))
    torch.testing.assert_close(simplex_part(merged, torch.arange(3))[0], merged / 2)


def test_sdmgrad_weights_keep_lamda_share_of_the_mean():
    b = SDMGrad(TASKS, lamda=0.5)
    _, w = b.combine(rand(3, 20, seed=3), torch.ones(3))
    torch.testing.assert_close(float(w.sum()), 1.0)
    assert float(w.min()) >= 0.5 / 3 / 1.5 - 1e-6  # w >= lamda/T / (1 + lamda)


# -- the balancer contract -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_identical_gradients_give_a_positive_multiple(name):
    g = rand(1, 20, seed=8).expand(3, 20).contiguous()
    shared, _ = build_balancer(name, TASKS).combine(g, torch.ones(3))
    scale = float(shared @ g[0] / (g[0] @ g[0]))
    assert scale > 0
    torch.testing.assert_close(shared, scale * g[0], atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("name", ["modo", "sdmgrad"])
def test_gram_methods_agree_with_combine(name):
    b1, b2 = build_balancer(name, TASKS), build_balancer(name, TASKS)
    assert b1.uses_gram and not b1.needs_raw
    for step in range(3):
        g, losses = rand(3, 40, seed=50 + step), torch.rand(3) + 0.5
        shared, w = b1.combine(g, losses)
        w2 = b2.weights_from_gram(g.double() @ g.double().T, losses)
        torch.testing.assert_close(w2, w, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(w2 @ g, shared, atol=1e-5, rtol=1e-5)


def test_moco_needs_raw_vectors_and_is_refused_in_features_mode_under_ddp():
    b = build_balancer("moco", TASKS)
    assert b.needs_raw and not b.uses_gram
    with pytest.raises(NotImplementedError):
        b.weights_from_gram(torch.eye(3), torch.ones(3))
    with pytest.raises(ValueError, match="grad_source=params"):
        check_balancer(b, tiny_cfg(grad_source="features"), distributed=True)
    check_balancer(b, tiny_cfg(grad_source="params"), distributed=True)


def test_moco_restarts_its_trackers_when_the_size_changes():
    b = build_balancer("moco", TASKS)
    b.combine(rand(3, 10, seed=1), torch.ones(3))
    with pytest.warns(RuntimeWarning, match="10 -> 12"):
        b.combine(rand(3, 12, seed=2), torch.ones(3))
    assert b.y.shape == (3, 12) and b.counts.tolist() == [1, 1, 1]


@pytest.mark.parametrize("name", NAMES)
def test_absent_task_state_untouched(name):
    b = build_balancer(name, TASKS, **({"gamma": 0.05} if name == "modo" else {}))
    b.combine(rand(3, 30, seed=80), torch.rand(3) + 0.5)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    shared, w = b.combine(rand(2, 30, seed=81), torch.rand(2) + 0.5, active=[0, 2])
    assert shared.shape == (30,) and torch.isfinite(shared).all() and w.shape == (2,)
    assert b.weights["depth"] == 0.0
    after = b.state_dict()
    for key, old in before.items():
        if key != "step":
            torch.testing.assert_close(after[key][1], old[1], msg=key)
            # the present tasks' state moved (SDMGrad's w often sits at a vertex that stays)
            assert name == "sdmgrad" or not torch.equal(after[key], old), key


@pytest.mark.parametrize("name", NAMES)
def test_all_tasks_present_after_a_subset_step_is_the_peer_rule(name):
    """After a subset step, a step with every task uses the stored (whole-simplex) state."""
    b = build_balancer(name, TASKS)
    b.combine(rand(2, 30, seed=82), torch.rand(2) + 0.5, active=[2, 0])
    shared, w = b.combine(rand(3, 30, seed=83), torch.rand(3) + 0.5)
    assert torch.isfinite(shared).all() and w.shape == (3,)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hparam_is_a_value_error(name):
    with pytest.raises(ValueError, match="bogus"):
        build_balancer(name, TASKS, bogus=1)


@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("moco", {"beta": 1.5}),
        ("moco", {"beta_sigma": -1}),
        ("moco", {"gamma": "x"}),
        ("moco", {"gamma_sigma": -0.5}),
        ("moco", {"rho": -1}),
        ("modo", {"gamma": -1}),
        ("modo", {"rho": "x"}),
        ("sdmgrad", {"lamda": -0.1}),
        ("sdmgrad", {"niter": 0}),
        ("sdmgrad", {"niter": 2.5}),
    ],
)
def test_bad_hparam_value_is_a_value_error(name, hp):
    with pytest.raises(ValueError, match=next(iter(hp))):
        build_balancer(name, TASKS, **hp)
