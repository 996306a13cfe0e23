"""cvmtl.mtl_backward: every balancer in a user's own loop, equal to the engine's step."""

import copy

import pytest
import torch
from tinymtl import TinyMTL, make_batch, tiny_cfg
from torch import nn

import cvmtl
from cvmtl.balancers import BALANCERS, build_balancer, mtl_backward
from cvmtl.engine.step import train_step
from cvmtl.losses import compute_losses

TASKS = ["seg", "depth", "normal"]
GRADIENT = [n for n in BALANCERS if build_balancer(n, TASKS).kind == "gradient"]
CASES = [(n, "features") for n in BALANCERS] + [(n, "params") for n in GRADIENT]


def _grads(model: nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize(("name", "source"), CASES)
def test_every_balancer_equals_the_engine_step(name, source):
    """The public call on the model's own forward leaves the gradients the engine's step
    leaves (step=False), and reports its weights."""
    torch.manual_seed(0)
    engine_model = TinyMTL(TASKS)
    user_model = copy.deepcopy(engine_model)
    batch, cfg = make_batch(), tiny_cfg(grad_source=source)
    engine_bal, user_bal = build_balancer(name, TASKS), build_balancer(name, TASKS)
    opt = torch.optim.SGD(engine_model.parameters(), lr=0.1)
    torch.manual_seed(1)  # random methods (rlw, graddrop) draw the same numbers on both paths
    out = train_step(engine_model, batch, engine_bal, opt, None, cfg, step=False)

    torch.manual_seed(1)
    image = batch["image"]
    z = user_model.forward_features(image)
    losses = compute_losses(user_model.forward_heads(z, image.shape[-2:]), batch, cfg)
    weights = mtl_backward(
        losses,
        user_bal,
        shared_params=user_model.shared_parameters(),
        features=z if source == "features" else None,
    )
    engine, user = _grads(engine_model), _grads(user_model)
    for key, grad in engine.items():
        assert (grad is None) == (user[key] is None), key
        if grad is not None:
            torch.testing.assert_close(user[key], grad, atol=1e-6, rtol=1e-5, msg=key)
    expected = dict(zip(TASKS, out.weights.tolist()))
    assert weights == pytest.approx(expected, abs=1e-6)


class TwoHeads(nn.Module):
    """A model of the user's own: no cvmtl interface, task names of its own."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
        self.left = nn.Linear(8, 1)
        self.right = nn.Linear(8, 3)

    def forward(self, x):
        z = self.trunk(x)
        return z, {"left": self.left(z).pow(2).mean(), "right": self.right(z).abs().mean()}


def _task_grads(model, losses, z):
    """Reference per-task gradients w.r.t. the trunk and the features, by autograd.grad."""
    trunk = list(model.trunk.parameters())
    return {t: torch.autograd.grad(v, trunk + [z], retain_graph=True) for t, v in losses.items()}


def test_fixed_weighs_any_task_names():
    torch.manual_seed(0)
    model, x = TwoHeads(), torch.randn(5, 6)
    ref = copy.deepcopy(model)
    _, losses = model(x)
    balancer = cvmtl.build_balancer("fixed", ["left", "right"], weights={"left": 2.0})
    weights = cvmtl.mtl_backward(losses, balancer, shared_params=model.trunk.parameters())
    assert weights == {"left": 2.0, "right": 1.0}
    _, ref_losses = ref(x)
    (2 * ref_losses["left"] + ref_losses["right"]).backward()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    with pytest.raises(ValueError, match="lfet"):
        build_balancer("fixed", ["left", "right"], weights={"lfet": 2.0})


@pytest.mark.parametrize("name", ["mgda", "upgrad", "imtl", "nash_mtl", "cagrad", "db_mtl"])
@pytest.mark.parametrize("features", [True, False])
def test_gradient_methods_on_a_plain_module(name, features):
    """Shared parameters get sum_t w_t grad_t of the weights the call reports (from the
    features' or the parameters' gradients); each head keeps its own task's gradient."""
    torch.manual_seed(0)
    model, x = TwoHeads(), torch.randn(5, 6)
    z, losses = model(x)
    ref = _task_grads(model, losses, z)
    balancer = build_balancer(name, ["left", "right"])
    weights = mtl_backward(
        losses, balancer, shared_params=model.trunk.parameters(), features=z if features else None
    )
    trunk = list(model.trunk.parameters())
    for i, p in enumerate(trunk):
        expected = sum(weights[t] * ref[t][i] for t in ("left", "right"))
        torch.testing.assert_close(p.grad, expected, atol=1e-6, rtol=1e-5)
    for task, head in (("left", model.left), ("right", model.right)):
        own = torch.autograd.grad(model(x)[1][task], list(head.parameters()))
        for p, g in zip(head.parameters(), own):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_gradient_method_weights_come_from_the_features_gram():
    """Features mode: MGDA's weights are the min-norm point of the feature gradients (two
    tasks: closed form), not of the parameter gradients."""
    torch.manual_seed(0)
    model = TwoHeads()
    z, losses = model(torch.randn(5, 6))
    g = {t: torch.autograd.grad(v, z, retain_graph=True)[0].flatten() for t, v in losses.items()}
    a, b = g["left"].double(), g["right"].double()
    alpha = float(((b - a) @ b / ((a - b) @ (a - b))).clamp(0, 1))
    weights = mtl_backward(
        losses, build_balancer("mgda", ["left", "right"]), shared_params=[], features=z
    )
    assert weights["left"] == pytest.approx(alpha, abs=1e-5)
    assert weights["right"] == pytest.approx(1 - alpha, abs=1e-5)


def test_scaler_and_accumulation_scale_like_backward():
    """With k accumulated shares the gradients add up to the whole batch's; a GradScaler's
    scale is carried like scaler.scale(loss).backward()."""
    torch.manual_seed(0)
    model, x = TwoHeads(), torch.randn(6, 6)
    whole = copy.deepcopy(model)
    balancer = build_balancer("fixed", ["left", "right"], weights={"right": 3.0})
    for part in x.chunk(2):
        _, losses = model(part)
        mtl_backward(
            {t: v / 2 for t, v in losses.items()},
            balancer,
            shared_params=model.trunk.parameters(),
            accumulation_steps=2,
        )
    _, losses = whole(x)
    (losses["left"] + 3 * losses["right"]).backward()
    for p, q in zip(model.parameters(), whole.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)

    scaled = copy.deepcopy(whole)
    scaled.zero_grad()
    _, losses = scaled(x)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    mtl_backward(losses, balancer, shared_params=scaled.trunk.parameters(), scaler=scaler)
    for p, q in zip(scaled.parameters(), whole.parameters()):
        torch.testing.assert_close(p.grad, 8 * q.grad, atol=1e-5, rtol=1e-5)


def test_accumulation_gives_uw_its_whole_batch_gradient():
    """UW's log-variances get, over k accumulated shares, their gradient at the whole batch's
    losses (once, not k times: the ``+ s_t`` term is no share), as the engine gives them."""
    torch.manual_seed(0)
    model, x = TwoHeads(), torch.randn(6, 6)
    whole = copy.deepcopy(model)
    acc, ref = build_balancer("uw", ["left", "right"]), build_balancer("uw", ["left", "right"])
    with torch.no_grad():
        for b in (acc, ref):
            b.log_vars["left"].fill_(0.3)
            b.log_vars["right"].fill_(-0.2)
    for part in x.chunk(2):
        _, losses = model(part)
        shares = {t: v / 2 for t, v in losses.items()}
        mtl_backward(shares, acc, shared_params=model.trunk.parameters(), accumulation_steps=2)
    _, losses = whole(x)
    mtl_backward(losses, ref, shared_params=whole.trunk.parameters())
    for p, q in zip(
        [*model.parameters(), *acc.parameters()], [*whole.parameters(), *ref.parameters()]
    ):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)


def test_bad_input_is_one_line():
    model = TwoHeads()
    z, losses = model(torch.randn(2, 6))
    balancer = build_balancer("mgda", ["left", "right"])
    with pytest.raises(ValueError, match=r"\['middle'\]"):
        mtl_backward({**losses, "middle": losses["left"]}, balancer, shared_params=[])
    with pytest.raises(ValueError, match="require grad"):
        mtl_backward(losses, balancer, shared_params=[], features=z.detach())
    with pytest.raises(ValueError, match="no loss"):
        mtl_backward({}, balancer, shared_params=[])


def test_public_names():
    assert cvmtl.mtl_backward is mtl_backward
    assert dir(cvmtl) == sorted(cvmtl.__all__)
    assert all(getattr(cvmtl, name) is not None for name in cvmtl.__all__)
    assert {"mtl_backward", "Predictor", "build_balancer"} <= set(cvmtl.__all__)
