"""model.task_exchange: each task's fused map gets a learned mix of the other tasks' maps."""

from __future__ import annotations

import torch

from cvmtl.config import load_config
from cvmtl.models import build_model
from cvmtl.models.exchange import TaskExchange


def make_cfg(*overrides: str):
    small = ["model.neck_channels=16", "model.head_channels=8", "data.crop=[64,96]"]
    return load_config(None, [*small, *overrides])


def test_the_mix_is_the_own_map_plus_a_1x1_conv_of_the_others() -> None:
    torch.manual_seed(0)
    exchange = TaskExchange(["a", "b", "c"], 2)
    with torch.no_grad():
        for p in exchange.parameters():
            p.normal_()
    maps = {t: torch.randn(1, 2, 3, 4) for t in "abc"}
    out = exchange(maps)
    # by hand, per pixel: out_b[o] = b[o] + sum_i W_b[o, i] * concat(a, c)[i]
    others = torch.cat([maps["a"], maps["c"]], 1)[0]  # [4, 3, 4]
    weight = exchange.mix["b"][:, :, 0, 0]  # [2, 4]
    expected = maps["b"][0] + torch.einsum("oi,ihw->ohw", weight, others)
    torch.testing.assert_close(out["b"][0], expected)


def test_starts_as_the_network_without_it_and_draws_nothing_more() -> None:
    image = torch.randn(2, 3, 64, 96)
    outs, draws = [], []
    for on in (False, True):
        torch.manual_seed(4)
        model = build_model(make_cfg(f"model.task_exchange={on}")).eval()
        draws.append(torch.randn(4))
        with torch.no_grad():
            outs.append(model(image))
    assert torch.equal(draws[0], draws[1])
    assert all(torch.equal(outs[0][t], outs[1][t]) for t in outs[0])


def test_a_one_task_model_has_none() -> None:
    model = build_model(make_cfg("tasks=[seg]", "model.task_exchange=true"))
    assert model.exchange is None
    plain = build_model(make_cfg("tasks=[seg]"))
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]


def test_features_mode_split_equals_forward_and_the_mix_is_shared() -> None:
    torch.manual_seed(0)
    model = build_model(make_cfg("model.task_exchange=true")).eval()
    with torch.no_grad():
        for p in model.exchange.parameters():
            p.normal_(0, 0.1)
    image = torch.randn(2, 3, 60, 90)
    with torch.no_grad():
        plain = model(image)
        split = model.forward_heads(model.forward_features(image), image.shape[-2:])
    for task in model.tasks:
        assert torch.equal(plain[task], split[task])
    mix = {id(p) for p in model.exchange.parameters()}
    assert mix <= {id(p) for p in model.shared_parameters()}
    assert all(mix.isdisjoint(id(p) for p in model.task_parameters(t)) for t in model.tasks)
    # a task's loss trains the mix into it, and reaches the other tasks' fusions through it
    loss = model(image)["seg"].float().square().mean()
    loss.backward()
    assert model.exchange.mix["seg"].grad.abs().sum() > 0
    assert model.exchange.mix["depth"].grad is None or not model.exchange.mix["depth"].grad.any()
    assert any(
        p.grad is not None and p.grad.any() for p in model.heads["depth"].fusion.parameters()
    )
