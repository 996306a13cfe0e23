"""``config``, ``dualproj`` and ``upgrad`` against TorchJD 0.18.0's ``ConFIG``, ``DualProj``
and ``UPGrad``.

The peer's outputs on seeded random gradient matrices are recorded (float64) in
``tests/fixtures/peers/torchjd_*.json`` by ``tests/fixtures/peers/make_torchjd_fixtures.py``
(its docstring says how to rerun it); TorchJD is not needed here.
"""

import json
from pathlib import Path

import pytest
import torch

from cvmtl.balancers import build_balancer

FIXTURES = Path(__file__).parent / "fixtures" / "peers"
F64 = torch.float64


def _load(name: str) -> list[dict]:
    data = json.loads((FIXTURES / f"torchjd_{name}.json").read_text())
    assert data["peer"] == "torchjd" and data["version"].startswith("0.18")
    return data["cases"]


CONFIG_CASES = _load("config")
DUALPROJ_CASES = _load("dualproj")
UPGRAD_CASES = _load("upgrad")


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _weights64(name: str, gram: torch.Tensor) -> torch.Tensor:
    """The method's weights computed in float64 throughout (the public API returns float32)."""
    n = gram.shape[0]
    bal = build_balancer(name, [f"t{i}" for i in range(n)])
    return bal._weights_from_gram(gram, torch.ones(n, dtype=F64), list(range(n)))


def _ids(cases: list[dict]) -> list[str]:
    return [c["name"] for c in cases]


# -- ConFIG ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CONFIG_CASES, ids=_ids(CONFIG_CASES))
def test_config_equals_torchjd(case):
    j = _t(case["J"])
    update = _weights64("config", j @ j.T) @ j
    torch.testing.assert_close(update, _t(case["update"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["random_T3_D10", "conflicting_T5", "scales_T3", "zero_row_T3"])
def test_config_public_api_float32(name):
    case = next(c for c in CONFIG_CASES if c["name"] == name)
    j = _t(case["J"])
    tasks = [f"t{i}" for i in range(j.shape[0])]
    shared, w = build_balancer("config", tasks).combine(j.float(), torch.ones(len(tasks)))
    ref = _t(case["update"]).float()
    torch.testing.assert_close(shared, ref, atol=1e-4 * float(ref.abs().max()), rtol=1e-4)
    gram_w = build_balancer("config", tasks).weights_from_gram(j @ j.T, torch.ones(len(tasks)))
    torch.testing.assert_close(gram_w, w, atol=1e-5 * float(w.abs().max()), rtol=1e-5)


def test_config_update_makes_equal_angles_and_hurts_no_task():
    g = torch.randn(4, 50, generator=torch.Generator().manual_seed(3), dtype=F64)
    g[1] = -0.9 * g[0] + 0.2 * g[1]
    g = g * torch.tensor([0.1, 1.0, 10.0, 3.0], dtype=F64)[:, None]
    update = _weights64("config", g @ g.T) @ g
    cos = (g @ update) / (g.norm(dim=1) * update.norm())
    torch.testing.assert_close(cos, cos.mean().expand(4), atol=1e-10, rtol=0)
    assert (cos > 0).all()
    # length rule: the update's norm is the sum of the gradients' projections on its direction
    torch.testing.assert_close(update.norm(), (g @ update).sum() / update.norm())


# -- DualProj ----------------------------------------------------------------------------------
EXACT = [c for c in DUALPROJ_CASES if c["update_exact"] is not None]


@pytest.mark.parametrize("case", DUALPROJ_CASES, ids=_ids(DUALPROJ_CASES))
def test_dualproj_kkt_certificate(case):
    """``x = J^T w`` is the projection of the mean onto ``{x : J x >= 0}`` iff, with
    ``lam = w - 1/T``: ``lam >= 0``, ``J x >= 0`` and ``lam . J x = 0`` (covers the singular
    cases the peer's exact run could not solve)."""
    j = _t(case["J"])
    w = _weights64("dualproj", j @ j.T)
    lam, jx = w - 1.0 / len(w), j @ (w @ j)
    scale = float((j @ j.T).diagonal().max())
    assert (lam >= -1e-9).all()
    assert (jx >= -1e-9 * scale).all()
    assert abs(float(lam @ jx)) <= 1e-9 * scale
    if (j @ j.mean(0) >= 0).all():  # the mean hurts no task: kept as is
        torch.testing.assert_close(w, torch.full_like(w, 1.0 / len(w)))


def test_dualproj_public_api_float32():
    case = next(c for c in EXACT if c["name"] == "conflicting_T5")
    j = _t(case["J"])
    tasks = [f"t{i}" for i in range(j.shape[0])]
    shared, _ = build_balancer("dualproj", tasks).combine(j.float(), torch.ones(len(tasks)))
    torch.testing.assert_close(shared, _t(case["update_exact"]).float(), atol=1e-4, rtol=1e-4)


# -- UPGrad ------------------------------------------------------------------------------------
UPGRAD_EXACT = [c for c in UPGRAD_CASES if c["update_exact"] is not None]


def test_upgrad_fixtures_cover_the_badly_scaled_cases():
    assert {"scales_T3", "scales_T5"} <= {c["name"] for c in UPGRAD_EXACT}


# -- the dual-cone projections: DualProj and UPGrad --------------------------------------------
PROJECTIONS = [("dualproj", c) for c in DUALPROJ_CASES] + [("upgrad", c) for c in UPGRAD_CASES]
PROJECTIONS_EXACT = [(m, c) for m, c in PROJECTIONS if c["update_exact"] is not None]


def _pair_ids(pairs: list[tuple[str, dict]]) -> list[str]:
    return [f"{m}-{c['name']}" for m, c in pairs]


@pytest.mark.parametrize(("method", "case"), PROJECTIONS_EXACT, ids=_pair_ids(PROJECTIONS_EXACT))
def test_projection_equals_torchjd_exact(method, case):
    """Against the peer with its ridge off (``QuadprogProjector(norm_eps=0, reg_eps=0)``), the
    badly scaled cases (norms 1e-2 .. 1e2) included."""
    j = _t(case["J"])
    w = _weights64(method, j @ j.T)
    torch.testing.assert_close(w, _t(case["weights_exact"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(w @ j, _t(case["update_exact"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("method", "case"), PROJECTIONS, ids=_pair_ids(PROJECTIONS))
def test_projection_solves_torchjd_default_problem(method, case):
    """The peer's default run solves the same QPs on ``G / tr(G) + 1e-4 I``: given that matrix
    our solver returns the peer's weights (singular cases included)."""
    j = _t(case["J"])
    gram = j @ j.T
    reg = gram / gram.diagonal().sum() + 1e-4 * torch.eye(len(gram), dtype=F64)
    w = _weights64(method, reg)
    torch.testing.assert_close(w, _t(case["weights_default"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(w @ j, _t(case["update_default"]), atol=1e-5, rtol=0)


# -- hyper-parameters --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["config", "dualproj"])
def test_unknown_hyper_parameter_is_named(name):
    with pytest.raises(ValueError, match="alpha"):
        build_balancer(name, ["a", "b"], alpha=1.0)


def test_dualproj_refuses_more_tasks_than_the_exact_solver_enumerates():
    with pytest.raises(ValueError, match="dualproj: at most 12 tasks"):
        build_balancer("dualproj", [f"t{i}" for i in range(13)])
