"""model.neck_sharing: what the tasks share of the FPN, with the single-task model unchanged."""

from __future__ import annotations

import pytest
import torch

from cvmtl.config import load_config
from cvmtl.engine.restore import config_from_checkpoint
from cvmtl.models import build_model
from cvmtl.models.neck import FPN, LevelFusion, Levels, SharedConvs, TaskNormFPN

SHARINGS = ["pyramid", "all", "none", "convs"]


def make_cfg(*overrides: str):
    small = ["model.neck_channels=16", "model.head_channels=8", "data.crop=[64,96]"]
    return load_config(None, [*small, *overrides])


def test_default_shares_the_pyramid_and_fuses_per_task() -> None:
    model = build_model(make_cfg())
    assert isinstance(model.neck, FPN) and model.neck.fuse is None
    fusions = [model.heads[t].fusion for t in model.tasks]
    assert all(isinstance(f, LevelFusion) for f in fusions)
    assert len({id(f) for f in fusions}) == len(fusions)  # one per task, nothing shared
    shared = {id(p) for p in model.shared_parameters()}
    for task in model.tasks:  # a task's fusion is its own parameters, not shared ones
        fusion = {id(p) for p in model.heads[task].fusion.parameters()}
        assert fusion <= {id(p) for p in model.task_parameters(task)}
        assert fusion.isdisjoint(shared)


def test_all_and_none_shares() -> None:
    shared_all = build_model(make_cfg("model.neck_sharing=all"))
    assert isinstance(shared_all.neck.fuse, LevelFusion)
    assert all(shared_all.heads[t].fusion is None for t in shared_all.tasks)
    none = build_model(make_cfg("model.neck_sharing=none"))
    assert isinstance(none.neck, Levels) and not list(none.neck.parameters())
    assert all(isinstance(none.heads[t].fusion, FPN) for t in none.tasks)
    # nothing of a neck left to share: the shared parameters are the backbone's
    assert {id(p) for p in none.shared_parameters()} == {id(p) for p in none.backbone.parameters()}


def test_convs_share_the_fpn_convs_and_give_each_task_its_norms() -> None:
    model = build_model(make_cfg("model.neck_sharing=convs"))
    assert isinstance(model.neck, SharedConvs)
    fpns = [model.heads[t].fusion for t in model.tasks]
    assert all(isinstance(f, TaskNormFPN) and f._convs[0] is model.neck for f in fpns)
    convs = {id(p) for p in model.neck.parameters()}
    shared = {id(p) for p in model.shared_parameters()}
    assert convs and convs <= shared
    owned = [{id(p) for p in model.task_parameters(t)} for t in model.tasks]
    for own in owned:  # the norms and the fusion are the task's alone; the convs are not
        assert own.isdisjoint(convs) and own.isdisjoint(shared)
    assert not set.intersection(*owned)


@pytest.mark.parametrize("attention", [False, True])
def test_a_tasks_view_is_an_fpn_with_the_shared_convs_and_its_own_norms(attention: bool) -> None:
    """Against an independent reference: a plain :class:`FPN` given the shared conv weights and
    one task's norms (and fusion) computes that task's map exactly."""
    torch.manual_seed(1)
    cfg = make_cfg("model.neck_sharing=convs", f"model.level_attention={attention}")
    model = build_model(cfg)
    with torch.no_grad():  # give each task's norms different, non-trivial values
        for p in model.heads.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    feats = model.backbone(torch.randn(2, 3, 64, 96))
    neck = model.neck
    chans = [c.in_channels for c in neck.lateral]
    for task in model.tasks:
        view = model.heads[task].fusion
        ref = FPN(chans, neck.strides, cfg.model.neck_channels, "bn", True, attention).eval()
        for seq, conv, norm in zip(ref.lateral, neck.lateral, view.lateral_norms):
            seq[0].load_state_dict(conv.state_dict())
            seq[1].load_state_dict(norm.state_dict())
        for seq, conv, norm in zip(ref.smooth, neck.smooth, view.smooth_norms):
            seq[0].load_state_dict(conv.state_dict())
            seq[1].load_state_dict(norm.state_dict())
        ref.fuse.load_state_dict(view.fuse.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(view(feats), ref(feats), rtol=0, atol=0)


def test_convs_in_a_copy_of_the_model_are_the_copys() -> None:
    """The heads hold the shared convs by reference: a deep copy (EMA) must point to its own."""
    import copy

    model = build_model(make_cfg("model.neck_sharing=convs"))
    twin = copy.deepcopy(model)
    assert all(twin.heads[t].fusion._convs[0] is twin.neck for t in twin.tasks)
    with torch.no_grad():
        twin.neck.smooth[0].weight.add_(1.0)
    image = torch.randn(1, 3, 64, 96)
    model.eval(), twin.eval()
    with torch.no_grad():
        assert not torch.equal(model(image)["seg"], twin(image)["seg"])


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("sharing", SHARINGS)
def test_features_mode_split_equals_forward(sharing: str, attention: bool) -> None:
    """forward_heads(forward_features(x)) is exactly forward(x), and the gradient reaching the
    shared representation is the sum of what reaches the neck's output in the plain forward."""
    torch.manual_seed(0)
    cfg = make_cfg(f"model.neck_sharing={sharing}", f"model.level_attention={attention}")
    model = build_model(cfg).eval()
    image = torch.randn(2, 3, 60, 90)  # padded to 64x96 inside
    with torch.no_grad():
        plain = model(image)
        z = model.forward_features(image)
        split = model.forward_heads(z, image.shape[-2:])
    for task in model.tasks:
        assert torch.equal(plain[task], split[task])
    # gradients: through the flattened representation == through the model as a whole
    zd = model.forward_features(image).detach().requires_grad_()
    loss = sum(v.float().square().mean() for v in model.forward_heads(zd, (60, 90)).values())
    loss.backward()
    by_z = [p.grad.clone() for p in model.heads.parameters()]
    model.zero_grad()
    loss2 = sum(v.float().square().mean() for v in model(image).values())
    loss2.backward()
    for a, p in zip(by_z, model.heads.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("task", "attention"), [("seg", False), ("depth", False), ("seg", True)])
def test_single_task_model_is_the_same_network_under_every_sharing(
    task: str, attention: bool
) -> None:
    """The baselines do not change with neck_sharing: same modules, created in the same order
    (so seeded alike), same predictions."""
    image = torch.randn(2, 3, 64, 96)
    outs, params = {}, {}
    for sharing in SHARINGS:
        torch.manual_seed(3)
        cfg = make_cfg(
            f"tasks=[{task}]", f"model.neck_sharing={sharing}", f"model.level_attention={attention}"
        )
        model = build_model(cfg).eval()
        with torch.no_grad():
            outs[sharing] = model(image)[task]
        params[sharing] = sorted(float(p.detach().double().sum()) for p in model.parameters())
    for sharing in SHARINGS[1:]:
        assert torch.equal(outs[sharing], outs["pyramid"])
        assert params[sharing] == params["pyramid"]


@pytest.mark.parametrize("attention", [False, True])
def test_single_task_model_trains_identically_under_every_sharing(attention: bool) -> None:
    """Same parameter order (the optimizer's groups) and the same arithmetic: two AdamW steps of
    the one-task model leave the same weights whatever ``neck_sharing`` says."""
    from cvmtl.engine.optim import build_optimizer

    torch.manual_seed(0)
    image, target = torch.randn(4, 3, 64, 96), torch.randn(4, 1, 64, 96).abs()
    weights = {}
    for sharing in SHARINGS:
        cfg = make_cfg(
            "tasks=[depth]", f"model.neck_sharing={sharing}", f"model.level_attention={attention}"
        )
        torch.manual_seed(5)
        model = build_model(cfg)
        optimizer = build_optimizer(model, cfg.train)
        for _ in range(2):
            loss = (model(image)["depth"] - target).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        weights[sharing] = [p.detach().clone() for p in model.parameters()]
    for sharing in SHARINGS[1:]:
        assert all(torch.equal(a, b) for a, b in zip(weights[sharing], weights["pyramid"]))


def test_multi_task_per_task_fusion_costs_more_than_shared() -> None:
    per_task = build_model(make_cfg())
    shared = build_model(make_cfg("model.neck_sharing=all"))
    extra = sum(p.numel() for p in per_task.parameters()) - sum(
        p.numel() for p in shared.parameters()
    )
    one_fusion = sum(p.numel() for p in shared.neck.fuse.parameters())
    assert extra == (len(per_task.tasks) - 1) * one_fusion


def test_checkpoint_config_without_the_key_is_the_shared_design() -> None:
    """Checkpoints written before model.neck_sharing existed hold the one shared fusion."""
    cfg = config_from_checkpoint({"config": {"model": {"backbone": "resnet18"}}})
    assert cfg.model.neck_sharing == "all"
    cfg = config_from_checkpoint({"config": {"model": {"neck_sharing": "none"}}})
    assert cfg.model.neck_sharing == "none"


def test_unknown_value_is_one_line() -> None:
    with pytest.raises(ValueError, match="model.neck_sharing"):
        make_cfg("model.neck_sharing=heads")


def _fusion_pair(attention_bias: float) -> tuple[LevelFusion, LevelFusion]:
    """A fusion with attention whose masks are pinned by their last norm's bias, and the same
    fusion (same stage weights) without attention."""
    torch.manual_seed(0)
    gated = LevelFusion([4, 8, 16], 8, "bn", attention=True).eval()
    plain = LevelFusion([4, 8, 16], 8, "bn").eval()
    plain.load_state_dict(gated.state_dict(), strict=False)  # the stages; plain has no gates
    for gate in gated.gates:
        last_norm = gate.mask[1][1]
        last_norm.weight.data.zero_()
        last_norm.bias.data.fill_(attention_bias)
    return gated, plain


def test_level_attention_masks_each_level() -> None:
    """An open mask (sigmoid(+30) = 1) leaves the fusion as without attention; a closed one
    (sigmoid(-30) = 0) feeds it zeros."""
    levels = [torch.randn(2, 8, 16 // f, 24 // f) for f in (1, 2, 4)]
    with torch.no_grad():
        gated, plain = _fusion_pair(30.0)
        torch.testing.assert_close(gated(levels), plain(levels))
        gated, plain = _fusion_pair(-30.0)
        torch.testing.assert_close(gated(levels), plain([torch.zeros_like(x) for x in levels]))


def test_level_attention_is_per_task_and_off_by_default() -> None:
    assert build_model(make_cfg()).heads["seg"].fusion.gates is None
    model = build_model(make_cfg("model.level_attention=true"))
    gates = [model.heads[t].fusion.gates for t in model.tasks]
    assert all(g is not None and len(g) == len(model.neck.strides) for g in gates)
    shared = {id(p) for p in model.shared_parameters()}
    for task in model.tasks:  # every task learns its own masks over the shared levels
        own = {id(p) for p in model.heads[task].fusion.gates.parameters()}
        assert own <= {id(p) for p in model.task_parameters(task)} and own.isdisjoint(shared)
